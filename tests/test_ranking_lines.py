"""The end-of-search ranking lists every search trial (issue 11 part 5): reached ones by FLOPs to
target, then the rest by final loss (no loss last); the reference run is not ranked."""

from __future__ import annotations

from types import SimpleNamespace

from progtune.search_cli import ranking_lines

REFERENCE_FTT = 1.0e12


def _row(trial_id: str, role: str, ftt: float | None, loss: float | None) -> dict:
    return {
        "trial_id": trial_id,
        "role": role,
        "status": "completed" if loss is not None else "failed",
        "flops_to_target": ftt,
        "saving": None if ftt is None else 1 - ftt / REFERENCE_FTT,
        "final_eval_loss": loss,
        "stages.unique_layers": (1, 2, 4),
        "stages.boundaries": (0.25, 0.5),
        "sampling.strategy": "lvps",
        "growth.operator": "interpolation",
        "lr.peak": 2e-3,
    }


def _state() -> SimpleNamespace:
    """14 reached (FLOPs to target shuffled), 4 missed (one without a loss), and the reference."""
    ftts = [7, 3, 12, 1, 9, 14, 5, 2, 11, 6, 13, 4, 8, 10]
    rows = [_row(f"t{f:02d}", "search", f * 1e10, 3.0 + f / 100) for f in ftts]
    rows += [
        _row("m_noloss", "search", None, None),
        _row("m_high", "search", None, 3.9),
        _row("m_low", "search", None, 3.5),
        _row("m_mid", "search", None, 3.7),
    ]
    rows.insert(5, _row("reference", "reference", REFERENCE_FTT, 3.2))
    return SimpleNamespace(trial_rows=lambda: rows)


def test_every_search_trial_is_ranked_in_objective_order():
    lines = ranking_lines(_state())
    assert lines[0].split()[:2] == ["rank", "trial"]
    body = [ln.split() for ln in lines[1:]]
    reached = [f"t{i:02d}" for i in range(1, 15)]
    assert [cols[1] for cols in body] == [*reached, "m_low", "m_mid", "m_high", "m_noloss"]
    assert [int(cols[0]) for cols in body] == list(range(1, 19))
    assert body[0][3:5] == ["1.000e+10", "99.0%"]
    assert body[14][3:6] == ["not", "reached", "-"] and body[-1][6] == "-"
