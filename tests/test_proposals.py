"""Proposals see results: after Optuna's start-up trials, every trial is proposed with every
finished trial told (issue 11 part 1). The slow test reads a real search's journal: creation
times (datetime_start) against the times earlier trials were told (datetime_complete); the fast
ones drive the searcher directly, with a stand-in for the driver.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest

from progtune.config import resolve
from progtune.search_state import SearchSettings, SearchState

NUM_SAMPLES = 6
STARTUP = max(2, min(10, NUM_SAMPLES // 2))  # TPE's start-up trials (progtune.optuna_searcher)
SLOTS = 2  # trials that fit at once: the CPUs over --cpus-per-trial below


@pytest.mark.slow
def test_each_proposal_after_the_start_up_trials_sees_every_finished_trial(tmp_path):
    import optuna

    cpus_per_trial = (os.cpu_count() or 2) / SLOTS  # 1, the default, on a 2-core machine
    env = {**os.environ, "PROGTUNE_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    args = ["--space", "smoke", "--preset", "tiny", "--num-samples", str(NUM_SAMPLES),
            "--name", "p", "--storage", str(tmp_path / "res"),
            "--cpus-per-trial", str(cpus_per_trial)]  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "progtune.cli", "search", *args],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "res" / "p" / "optuna.journal"))
    )
    trials = optuna.load_study(study_name="p", storage=storage).trials
    assert len(trials) == NUM_SAMPLES
    assert all(t.datetime_complete is not None for t in trials), [t.state for t in trials]
    trials.sort(key=lambda t: t.datetime_start)
    for i, trial in enumerate(trials[STARTUP:], start=STARTUP):
        # Trials not yet told when this one was proposed: only those still training beside it.
        untold = [
            earlier.number
            for earlier in trials[:i]
            if earlier.datetime_complete > trial.datetime_start
        ]
        assert len(untold) <= SLOTS - 1, (
            f"trial {trial.number} (the {i + 1}th) was proposed at {trial.datetime_start} "
            f"before trials {untold} were told; created/told: "
            + ", ".join(f"{t.number}: {t.datetime_start:%T.%f}/{t.datetime_complete:%T.%f}"
                        for t in trials)
        )  # fmt: skip


# ---------------------------------------------------------------------------- the searcher alone
class Driver:
    """Stands in for the driver's Search: a fixed number of slots, a reference never done."""

    def __init__(self, capacity: int):
        self.capacity, self.polls = capacity, 0

    def trial_capacity(self) -> int:
        return self.capacity

    def poll_reference(self) -> None:
        self.polls += 1


def _searcher(tmp_path, num_samples: int, capacity: int, sampler: str = "tpe"):
    from progtune.optuna_searcher import make_searcher
    from progtune.spaces import load_space

    base = resolve("tiny")
    settings = SearchSettings(load_space("smoke"), base, {}, "s", str(tmp_path),
                              num_samples=num_samples, sampler=sampler)  # fmt: skip
    state = SearchState(settings.exp_uri, "s", 512, target_loss=None)
    driver = Driver(capacity)
    return make_searcher(settings, state, None, gate=driver), state, driver


def _train(state: SearchState, trial_id: str, losses: list[float]) -> None:
    state.start(trial_id, "search", resolve("tiny"), 1e9, dt.datetime.now(dt.UTC))
    for i, loss in enumerate(losses):
        state.add_row(
            trial_id, {"step": i, "tokens": 1000 * i, "flops": 1e8 * i, "eval_loss": loss}
        )


def test_proposals_fill_free_slots_then_wait_for_every_finished_trial(tmp_path):
    searcher, state, driver = _searcher(tmp_path, num_samples=4, capacity=2)  # 2 start-up trials
    assert searcher.suggest("a") and searcher.suggest("b")
    assert searcher.suggest("c") is None  # both slots busy
    _train(state, "a", [6.0, 5.0, 4.0])
    searcher.on_trial_complete("a", {"final": True})
    assert searcher.pending == ["a"]  # no target yet: not told, not counted as bad
    assert searcher.suggest("c") is None  # a free slot, but TPE would not see trial a
    assert driver.polls >= 3  # every ask looks for the reference run's result
    state.fixed_target = 4.5  # the reference run is done
    assert searcher.suggest("c")
    study = searcher._ot_study
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING", "RUNNING"]
    assert study.trials[0].value == pytest.approx(1.5e8)  # FLOPs to 4.5, interpolated


def test_an_interrupted_search_keeps_untold_trials_pending_for_its_resume(tmp_path):
    """CI failure of session 7: a Ctrl-C while the reference trained told the finished trial
    FAIL, so the resumed search, which then knew the target, could not tell it COMPLETE."""
    searcher, state, _ = _searcher(tmp_path, num_samples=4, capacity=2)
    searcher.suggest("a")
    _train(state, "a", [6.0, 5.0, 4.0])
    searcher.on_trial_complete("a", {"final": True})
    searcher.tell_pending(give_up=False)  # interrupted: the target may come on --resume
    assert searcher.pending == ["a"]
    assert [t.state.name for t in searcher._ot_study.trials] == ["RUNNING"]
    state.fixed_target = 4.5
    searcher.tell_pending(give_up=False)
    assert [t.state.name for t in searcher._ot_study.trials] == ["COMPLETE"]
    assert searcher.pending == []


def test_a_stopped_trial_is_pruned_with_its_held_out_losses(tmp_path):
    searcher, state, _ = _searcher(tmp_path, num_samples=4, capacity=2)
    searcher.suggest("a")
    _train(state, "a", [6.0, 5.5])
    searcher.on_trial_complete("a", {"final": False})  # a scheduler stopped it
    (trial,) = searcher._ot_study.trials
    assert trial.state.name == "PRUNED" and trial.intermediate_values == {0: 6.0, 1000: 5.5}


def test_the_searcher_pickles_without_the_driver_or_user_code(tmp_path):
    import ray.cloudpickle

    searcher, _, _ = _searcher(tmp_path, num_samples=4, capacity=2)
    searcher.suggest("a")
    copy = ray.cloudpickle.loads(ray.cloudpickle.dumps(searcher))
    assert copy.search_state is None and copy.gate is None and copy._space.space is None
    assert list(copy._ot_trials) == ["a"]
    path = tmp_path / "searcher.pkl"
    searcher.save(str(path))
    fresh, fresh_state, fresh_driver = _searcher(tmp_path, num_samples=4, capacity=2)
    fresh.restore(str(path))  # what Tune does on --resume: the saved bookkeeping, live links kept
    assert fresh.search_state is fresh_state and fresh.gate is fresh_driver
    assert list(fresh._ot_trials) == ["a"] and fresh._space.space is not None


@pytest.mark.parametrize("sampler", ["tpe", "random", "qmc", "gp"])
def test_every_sampler_proposes_past_its_start_up_trials(tmp_path, sampler):
    """Each `--sampler` (gp: Optuna's GPSampler, with scipy from the gp extra) keeps proposing
    distinct points after its 2 start-up trials were told, one slot at a time."""
    searcher, state, _ = _searcher(tmp_path, num_samples=4, capacity=1, sampler=sampler)
    state.fixed_target = 4.5
    for i, name in enumerate("abcdef"):
        assert searcher.suggest(name), f"{sampler}: no proposal for trial {i}"
        _train(state, name, [6.0, 5.0 - 0.1 * i, 4.0 + 0.2 * i])
        searcher.on_trial_complete(name, {"final": True})
    study = searcher._ot_study
    assert type(study.sampler).__name__ == {
        "tpe": "TPESampler", "random": "RandomSampler", "qmc": "QMCSampler", "gp": "GPSampler",
    }[sampler]  # fmt: skip
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    assert len({t.params["lr.peak"] for t in study.trials}) == 6
