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
    # Evaluations land where ASHA decides: each stopped trial's last row sits at a rung mark.
    ref_flops = trials[trials.role == "reference"].total_flops.iloc[0]
    curves = read_curves(tmp_path / "res" / "a" / "curves.parquet")
    for tid in stopped.trial_id:
        last = curves[curves.trial_id == tid].flops.max()
        assert any(m <= last for m in (ref_flops / 8, ref_flops / 4, ref_flops / 2))
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "res" / "a" / "optuna.journal"))
    )
    states = [t.state.name for t in optuna.load_study(study_name="a", storage=storage).trials]
    assert states.count("PRUNED") == len(stopped)
    assert states.count("COMPLETE") == len(runs) - len(stopped)


def test_stop_at_target_ends_trials_early_with_the_same_objective(tmp_path):
    out = search(
        tmp_path, "--space", "smoke", "--preset", "tiny", "--num-samples", "2", "--name", "t",
        "--target-loss", "5.0", "--stop-at-target",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials = read_trials(tmp_path / "res" / "t" / "trials.parquet")
    runs = trials[trials.role == "search"]
    assert (runs.status == "completed").all()
    assert (runs.flops_to_target.notna()).all() and (runs.objective == runs.flops_to_target).all()
    assert (runs.total_tokens < 16_384).all()  # stopped once the target was reached
    ref = trials[trials.role == "reference"].iloc[0]
    assert ref.total_tokens == 16_384  # the reference always runs its whole budget
