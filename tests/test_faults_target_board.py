"""The TargetBoard actor lost mid-search (issue 5, issue 15): `--stop-at-target` keeps working.

The board is a Ray actor on the driver's node holding the target loss for `--stop-at-target`
(published there once the reference run is done) and the reference run's live rows; Ray restarts
it when its process dies. First seen with a two-node cluster when the board sat on the lost node;
reproduced here by killing the board's process: once before the target is known, once after
trials already stopped at it. Every trial that starts after the second restart must still stop
at the first evaluation at or below the reference's target.
"""

from __future__ import annotations

import pandas as pd
import pytest
from search_processes import (
    Driver,
    assert_every_trial_once,
    expected_steps,
    kill,
    result_lines,
    wait_for,
)

from progtune.results import read_curves

pytestmark = pytest.mark.slow

# Trials train the reference's configuration (from scratch, full depth) on 4x its token budget,
# so each one passes the reference's final loss well before its own end.
_SPACE_KNOBS = {
    "stages.unique_layers": [2],
    "stages.boundaries": [],
    "sampling.strategy": "full",
    "budget.tokens": 65536,
    "eval.points": 16,
}
_SPACE = f'''"""The tiny reference's configuration on 4x its budget, lr near the preset's."""


def define(trial):
    return {{"lr.peak": trial.suggest_float("lr.peak", 3e-3, 4e-3), **{_SPACE_KNOBS!r}}}
'''


def _boards(d: Driver) -> list[int]:
    return [p for p, cmd in d.processes().items() if cmd.startswith("ray::TargetBoard")]


def _stopped_early(exp, total_steps: int) -> list[str]:
    """Search trials whose final report came before their last step (stopped at the target)."""
    out = []
    for path in exp.glob("trial_*/result.json"):
        tid = path.parent.name.removeprefix("trial_")
        try:
            last = result_lines(exp, tid)[-1]
        except (ValueError, IndexError):  # a line being written, or none yet
            continue
        if last.get("final") and last["step"] < total_steps:
            out.append(tid)
    return out


def _first_at_target(curve, target: float) -> int | None:
    """Step of the first evaluation after step 0 at or below the target (None: never)."""
    for step, loss in zip(curve["step"], curve["eval_loss"], strict=True):
        if step > 0 and pd.notna(loss) and loss <= target:
            return int(step)
    return None


def test_search_survives_losing_the_target_board(tmp_path, drivers):
    (tmp_path / "four_x.py").write_text(_SPACE)
    total_steps = expected_steps(**_SPACE_KNOBS)[-1]
    d = drivers(tmp_path, "--space", str(tmp_path / "four_x.py"), "--preset", "tiny",
                "--num-samples", "4", "--max-concurrent", "1", "--cpus-per-trial", "1",
                "--stop-at-target", "--storage", str(tmp_path / "res"), "--name", "b")  # fmt: skip
    exp = tmp_path / "res" / "b"

    # 1. Lost before the target is known: the target reaches the restarted board, trials stop.
    kill(wait_for(lambda: _boards(d), 300, d, "the TargetBoard actor"))
    wait_for(lambda: _stopped_early(exp, total_steps), 400, d, "a trial stopped at the target")

    # 2. Lost after the target was published and used.
    killed = wait_for(lambda: _boards(d), 60, d, "the restarted TargetBoard")
    kill(killed)
    wait_for(lambda: set(_boards(d)) - set(killed), 120, d, "the board restarted again")
    started = {p.parent.name.removeprefix("trial_") for p in exp.glob("trial_*/result.json")}

    assert d.wait(600) == 0, d.shown()
    trials = assert_every_trial_once(exp, 4)
    curves = read_curves(exp / "curves.parquet")
    later = [t for t in trials[trials["role"] == "search"]["trial_id"] if t not in started]
    assert later, f"no trial started after the board's second restart; started before: {started}"
    for tid in later:
        curve = curves[curves["trial_id"] == tid].sort_values("step")
        target = float(trials[trials["trial_id"] == tid]["target_loss"].iloc[0])
        at = _first_at_target(curve, target)
        assert at is not None, f"trial {tid} never reached the target {target}"
        assert int(curve["step"].iloc[-1]) == at < total_steps, (
            f"trial {tid} started after the board was restarted and ran on past the target "
            f"{target} (reached at step {at}, ran to step {int(curve['step'].iloc[-1])}): "
            "the restarted board lost the target"
        )
