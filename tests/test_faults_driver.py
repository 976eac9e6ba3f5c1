"""The search's driver interrupted (issue 5), proven with real processes on this machine.

SIGKILLed mid-search: `--resume` finishes the experiment, every trial once, the finished
reference run reused; SIGINT: exit 130, its Ray shut down, and the printed resume command
finishes it. The trial in flight at the interruption keeps its whole curve and its objective is
computed on that curve: FLOPs to target, or the documented surrogate - the SIGINT search's trials
cannot learn, so the surrogate branch is checked on every run.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from search_processes import (
    PROGTUNE,
    Driver,
    assert_every_trial_once,
    expected_steps,
    kill_marked,
    live_trials,
    marked,
    prepared_vocab_size,
    reference_completed,
    result_lines,
    run_cli,
    surrogate,
    wait_for,
)

from progtune.results import read_curves, read_trials

pytestmark = pytest.mark.slow

# 3 trials one at a time beside the reference run: the reference (from scratch, the slowest run)
# finishes while a later trial is early in its training, and the interruption hits that trial.
_DRIVER_SEARCH = ["--preset", "tiny", "--num-samples", "3", "--max-concurrent", "1",
                  "--cpus-per-trial", "1", "budget.tokens=262144", "eval.points=8"]  # fmt: skip
# The SIGINT search's trials barely learn, so its trial in flight surely misses the target and
# its objective is the surrogate; the SIGKILL search (smoke space) takes whichever branch.
_MISSING_SPACE = '''"""Every trial misses the target: a learning rate too small to learn."""


def define(trial):
    return {"lr.peak": trial.suggest_float("lr.peak", 1e-6, 2e-6, log=True)}
'''
_DRIVER_STEPS = {"budget.tokens": 262144, "eval.points": 8}
_DRIVER_HALF = 512  # of 1024 steps


def _reference_done_and_trial_training(exp: Path) -> Callable[[], str | None]:
    """The id of a search trial early in its training, once the reference run is done."""

    def cond():
        if not reference_completed(exp):
            return None
        live = live_trials(exp, _DRIVER_HALF)
        return next(iter(live), None)

    return cond


class Interrupted:
    """An experiment whose driver was stopped mid-search and then resumed."""

    tmp: Path  # the folder its driver ran in (token cache in tmp/cache)
    exp: Path
    in_flight: str  # the trial that was training when the driver stopped
    driver: Driver
    resumed: subprocess.CompletedProcess
    command: list[str]  # the resume command the driver printed (SIGINT)
    left_behind: list[int]  # its Ray processes still alive 3 s after the driver ended
    folder_left: list[str]  # its Ray temp folder, if still there then


def _interrupt(tmp: Path, name: str, sig: int, space: str) -> Interrupted:
    out = Interrupted()
    out.tmp = tmp
    storage = tmp / "res"
    out.exp = storage / name
    args = [*_DRIVER_SEARCH, "--space", space, "--storage", str(storage), "--name", name]
    d = out.driver = Driver(tmp, args)
    try:
        out.in_flight = wait_for(
            _reference_done_and_trial_training(out.exp), 400, d, "reference done + trial running"
        )
        d.processes()  # note its Ray temp folder while the driver is alive
        os.kill(d.pid, sig)
        d.wait(300)
        time.sleep(3)
        out.left_behind = [p for folder in d.ray_tmp for p in marked(folder + "/")]
        out.folder_left = [folder for folder in d.ray_tmp if os.path.exists(folder)]
        if sig == signal.SIGKILL:
            for folder in d.ray_tmp:  # a crashed machine takes its Ray along
                kill_marked(folder + "/")
            out.command = ["progtune", "search", "--resume", "--name", name, "--storage",
                           str(storage)]  # fmt: skip
        else:
            lines = d.stderr.splitlines()
            at = [i for i, ln in enumerate(lines) if "continue with:" in ln]
            out.command = shlex.split(lines[at[-1] + 1]) if at else []
            if d.proc.returncode != 130 or not at:
                return out  # the test reports it
        # The printed command, as a user would type it (the console script).
        out.resumed = run_cli(tmp, *out.command[1:], exe=[PROGTUNE])
    finally:
        d.stop()
    return out


@pytest.fixture(scope="module")
def driver_killed(tmp_path_factory) -> Interrupted:
    return _interrupt(tmp_path_factory.mktemp("sigkill"), "d", signal.SIGKILL, "smoke")


@pytest.fixture(scope="module")
def driver_interrupted(tmp_path_factory) -> Interrupted:
    tmp = tmp_path_factory.mktemp("sigint")
    (tmp / "missing.py").write_text(_MISSING_SPACE)
    return _interrupt(tmp, "i", signal.SIGINT, str(tmp / "missing.py"))


def _check_finished_experiment(run: Interrupted) -> None:
    resumed = run.resumed
    shown = resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert resumed.returncode == 0, shown
    assert "reusing the finished reference run" in resumed.stdout, shown
    assert "reference run (from scratch, full depth) started" not in resumed.stdout, shown
    trials = assert_every_trial_once(run.exp, 3)
    # Optuna's journal: the three trials, each told once, COMPLETE with a finite value.
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run.exp / "optuna.journal"))
    )
    study = optuna.load_study(study_name=run.exp.name, storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(study.trials) == 3 and len(done) == 3, study.trials
    assert all(math.isfinite(t.value) for t in done)
    values = sorted(trials[trials["role"] == "search"]["objective"])
    assert sorted(t.value for t in done) == pytest.approx(values)
    # The trial in flight really was continued from a checkpoint by another process.
    lines = result_lines(run.exp, run.in_flight)
    first_pid = lines[0]["pid"]
    after = [r for r in lines if r["pid"] != first_pid]
    assert after and after[0]["resumed_from"] > 0 and after[-1]["final"], lines[-3:]
    # Trials that were not in flight have whole curves.
    curves = read_curves(run.exp / "curves.parquet")
    for tid in set(trials["trial_id"]) - {run.in_flight}:
        steps = list(curves[curves["trial_id"] == tid]["step"])
        assert steps == expected_steps(**_DRIVER_STEPS), (tid, steps)


def test_driver_sigkill_then_resume_finishes_every_trial_once(driver_killed):
    assert driver_killed.driver.proc.returncode == -signal.SIGKILL
    _check_finished_experiment(driver_killed)


def test_sigint_exits_130_and_the_printed_command_finishes(driver_interrupted):
    run = driver_interrupted
    assert run.driver.proc.returncode == 130, run.driver.shown()
    storage = str(run.exp.parent)
    assert run.command == ["progtune", "search", "--resume", "--name", "i", "--storage", storage]
    assert "Traceback" not in run.driver.stderr, run.driver.shown()
    # A clean stop: its private Ray is shut down and its temp folder removed.
    assert run.driver.ray_tmp and not run.left_behind, run.left_behind
    assert not run.folder_left, run.folder_left
    _check_finished_experiment(run)


@pytest.mark.parametrize("how", ["sigkill", "sigint"])
def test_trial_in_flight_at_the_interruption_keeps_its_whole_curve(request, how):
    run = request.getfixturevalue({"sigkill": "driver_killed", "sigint": "driver_interrupted"}[how])
    assert run.resumed.returncode == 0
    trials = read_trials(run.exp / "trials.parquet")
    curves = read_curves(run.exp / "curves.parquet")
    curve = curves[curves["trial_id"] == run.in_flight].reset_index(drop=True)
    assert list(curve["step"]) == expected_steps(**_DRIVER_STEPS), list(curve["step"])
    # ... and its objective is FLOPs to target on that whole curve.
    from progtune.results import flops_to_target

    row = trials[trials["trial_id"] == run.in_flight].iloc[0]
    reached = flops_to_target(curve, float(row["target_loss"]))
    if reached is not None:
        assert row["objective"] == pytest.approx(reached, rel=1e-12)
    # Which branch ran is decided by the whole curve alone: reached -> FLOPs to target (also the
    # row's flops_to_target); never reached -> exactly the documented surrogate on that curve.
    print(f"in-flight trial {run.in_flight}: {'reached' if reached else 'surrogate'} branch")
    if how == "sigint":  # its trials cannot learn (_MISSING_SPACE): the surrogate branch
        assert reached is None, f"a trial of the missing space reached the target at {reached}"
    if reached is not None:
        assert row["flops_to_target"] == pytest.approx(reached, rel=1e-12), "reached branch"
    else:
        expected = surrogate(trials, curves, run.in_flight, prepared_vocab_size(run.tmp))
        assert pd.isna(row["flops_to_target"]), "surrogate branch, yet a flops_to_target"
        assert row["objective"] == pytest.approx(expected, rel=1e-12), "surrogate branch"
