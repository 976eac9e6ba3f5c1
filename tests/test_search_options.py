"""Search options end to end: ASHA early stopping (told to Optuna as PRUNED), --stop-at-target."""

from __future__ import annotations

import optuna
import pytest

from progtune.results import read_curves, read_trials
from tests.test_search_e2e import search

pytestmark = pytest.mark.slow


def test_asha_stops_trials_and_optuna_hears_pruned(tmp_path):
    out = search(
        tmp_path, "--space", "smoke", "--preset", "tiny", "--num-samples", "6", "--name", "a",
        "--scheduler", "asha", "--search-seed", "3", "budget.tokens=32768",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials = read_trials(tmp_path / "res" / "a" / "trials.parquet")
    runs = trials[trials.role == "search"]
    assert len(runs) == 6
    stopped = runs[runs.status == "stopped"]
    assert len(stopped) >= 1, runs[["trial_id", "status", "final_eval_loss"]]
    assert (stopped.total_tokens.isna() | (stopped.total_tokens < 32768)).all()
    # Evaluations land where ASHA decides, and ASHA decides there: each stopped trial's last row
    # is the one written when its FLOPs first passed a rung (1/8, 1/4, 1/2 of the reference's
    # planned FLOPs), i.e. within one training step of that rung.
    ref = trials[trials.role == "reference"].iloc[0]
    rungs = [ref.total_flops / 8, ref.total_flops / 4, ref.total_flops / 2]
    step_flops = ref.total_flops / ref.steps  # a step at full depth: the most one step costs
    curves = read_curves(tmp_path / "res" / "a" / "curves.parquet")
    for tid in stopped.trial_id:
        last = curves[curves.trial_id == tid].flops.max()
        assert any(m <= last < m + step_flops for m in rungs), (tid, last, rungs, step_flops)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "res" / "a" / "optuna.journal"))
    )
    states = [t.state.name for t in optuna.load_study(study_name="a", storage=storage).trials]
    assert states.count("PRUNED") == len(stopped)
    assert states.count("COMPLETE") == len(runs) - len(stopped)


def test_stop_at_target_ends_trials_early_with_the_same_objective(tmp_path, monkeypatch):
    """The usual path: no --target-loss, so the target is the reference run's final loss, which
    reaches the trials through the target board once the reference finishes. The reference trains
    at a low LR (the YAML file is not pinned, so the space still draws the trials' LR): trials
    reach its loss early, between two of 8 evaluations. One trial at a time, so the later ones
    start after the reference."""
    (tmp_path / "slow_reference.yaml").write_text("lr:\n  peak: 3.0e-4\neval:\n  points: 8\n")
    out = search(
        tmp_path, "--space", "smoke", "--preset", "tiny", "--num-samples", "3", "--name", "t",
        "--config", str(tmp_path / "slow_reference.yaml"), "--max-concurrent", "1",
        "--stop-at-target",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials = read_trials(tmp_path / "res" / "t" / "trials.parquet")
    ref = trials[trials.role == "reference"].iloc[0]
    assert ref.total_tokens == 16_384  # the reference always runs its whole budget
    assert (trials.target_loss == ref.final_eval_loss).all()
    runs = trials[trials.role == "search"]
    assert (runs.status == "completed").all()
    assert (runs.flops_to_target.notna()).all() and (runs.objective == runs.flops_to_target).all()
    stopped = runs[runs.total_tokens < 16_384]
    assert len(stopped) >= 1, runs[["trial_id", "total_tokens", "flops_to_target"]]
    # The objective is the one the same trial gets when it trains to the end.
    from progtune.config import KNOB_TYPES, from_flat
    from progtune.data import prepare_data
    from progtune.results import flops_to_target
    from progtune.train import train

    monkeypatch.setenv("PROGTUNE_CACHE", str(tmp_path / "cache"))
    for row in stopped.to_dict("records"):
        cfg = from_flat({k: row[k] for k in KNOB_TYPES if row[k] is not None})
        data = prepare_data(cfg.data)
        assert data.fingerprint == row["data_fingerprint"]
        whole = train(cfg, data=data)
        assert whole.total_tokens == 16_384
        expected = flops_to_target(whole.curve, ref.final_eval_loss)
        assert row["objective"] == pytest.approx(expected, rel=1e-9), row["trial_id"]
