"""`progtune confirm RESULTS --resume` continues a confirm run whose driver died (issue 12, part 5).

A real confirm driver is SIGKILLed while its first run trains: `progtune confirm RESULTS` then
refuses to start another one and says how to resume; `--resume` keeps what finished, continues
the run in flight from its last checkpoint and trains the rest, each run once in the results.
The refusals (no run to resume; an unfinished one without --resume) are also checked fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from search_processes import (
    PY,
    Driver,
    expected_steps,
    kill_marked,
    live_trials,
    result_lines,
    run_cli,
    search_env,
    wait_for,
)

from progtune.results import read_curves, read_trials

_KNOBS = {"budget.tokens": 131072, "eval.points": 8}


class ConfirmDriver(Driver):
    """A `progtune confirm` process in the background (Driver's watching and clean-up)."""

    def __init__(self, tmp: Path, args: list[str]):
        n = len(list(tmp.glob("driver-*.out")))
        self.out_path, self.err_path = tmp / f"driver-{n}.out", tmp / f"driver-{n}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [PY, "-m", "progtune.cli", "confirm", *args],
                stdout=out, stderr=err, cwd=tmp, env=search_env(tmp), start_new_session=True,
            )  # fmt: skip
        self.ray_tmp: set[str] = set()


# ---------------------------------------------------------------------------- fast: the refusals
def _plan(exp: Path, run: str, finished: bool) -> None:
    from progtune.confirm_cli import ConfirmPlan

    ConfirmPlan(run, [{"trial_id": "t1", "lr.peak": 0.01}], [1, 2], None, finished).save(str(exp))


def test_resume_without_an_unfinished_confirm_run_is_refused_in_one_line(tmp_path, capsys):
    from progtune.cli import main

    exp = tmp_path / "c"
    _plan(exp, "confirm-20260101-000000", finished=True)
    assert main(["confirm", str(exp), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"progtune: error: {exp} has no unfinished confirm run to resume; run progtune confirm "
        "without --resume"
    ]


def test_an_unfinished_confirm_run_is_named_with_the_command_that_resumes_it(tmp_path, capsys):
    from progtune.cli import main
    from progtune.confirm_cli import unfinished_confirm_run

    exp = tmp_path / "c"
    _plan(exp, "confirm-20260101-000000", finished=False)
    _plan(exp, "confirm-20260102-000000", finished=True)
    for uri in (str(exp), f"file://{exp}"):
        assert unfinished_confirm_run(uri).run == "confirm-20260101-000000"
    before = sorted(p.name for p in exp.iterdir())
    assert main(["confirm", str(exp), "--top", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unfinished confirm run (confirm-20260101-000000)" in err[0], err
    assert err[0].endswith(f"continue it with: progtune confirm {exp} --resume"), err
    assert sorted(p.name for p in exp.iterdir()) == before  # nothing written


# ---------------------------------------------------------------------------- slow: a real driver
@pytest.fixture(scope="module")
def confirm_killed(tmp_path_factory):
    """The experiment, its confirm folder, the run in flight, the refusal, the --resume run."""
    tmp = tmp_path_factory.mktemp("confirm-resume")
    exp = tmp / "res" / "c"
    knobs = [f"{k}={v}" for k, v in _KNOBS.items()]
    search = run_cli(tmp, "search", "--space", "smoke", "--preset", "tiny", "--num-samples", "1",
                     "--storage", str(tmp / "res"), "--name", "c", *knobs)  # fmt: skip
    assert search.returncode == 0, search.stdout[-2000:] + search.stderr[-2000:]
    d = ConfirmDriver(tmp, [str(exp), "--top", "1", "--seeds", "2", "--max-concurrent", "1"])
    try:

        def in_flight():
            folders = list(exp.glob("confirm-*/"))
            live = live_trials(folders[0], expected_steps(**_KNOBS)[-1] // 2) if folders else {}
            return live and (folders[0], next(iter(live)))

        folder, trial = wait_for(in_flight, 300, d, "a confirm run's first curve rows")
        d.processes()  # note its Ray temp folder
        os.kill(d.pid, signal.SIGKILL)
        d.wait(60)
        for ray_folder in d.ray_tmp:  # a crashed machine takes its Ray along
            kill_marked(ray_folder + "/")
        time.sleep(1)
        refused = run_cli(tmp, "confirm", str(exp))
        resumed = run_cli(tmp, "confirm", str(exp), "--resume")
    finally:
        d.stop()
    return SimpleNamespace(exp=exp, folder=folder, trial=trial, refused=refused, resumed=resumed)


@pytest.mark.slow
def test_confirm_without_resume_on_an_unfinished_run_says_how_to_resume(confirm_killed):
    exp, folder, refused = confirm_killed.exp, confirm_killed.folder, confirm_killed.refused
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and folder.name in lines[0], refused.stderr
    assert lines[0].endswith(f"progtune confirm {exp} --resume"), lines[0]


@pytest.mark.slow
def test_confirm_resume_keeps_finished_runs_and_continues_the_one_in_flight(confirm_killed):
    run = confirm_killed
    exp, folder, trial, resumed = run.exp, run.folder, run.trial, run.resumed
    shown = resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert resumed.returncode == 0, shown
    assert "continuing 1 configuration(s) of c on seeds [1, 2]" in resumed.stdout, shown
    assert len(list(exp.glob("confirm-*/"))) == 1  # the same confirm run, no second one
    assert json.loads((exp / f"{folder.name}.json").read_text())["finished"] is True
    trials = read_trials(exp / "trials.parquet")
    assert trials["trial_id"].is_unique, trials[["trial_id", "role", "status"]]
    confirm = trials[trials["role"] == "confirm"]
    assert sorted(confirm["seed"]) == [1, 2] and set(confirm["status"]) == {"completed"}
    assert trial in set(confirm["trial_id"])
    curves = read_curves(exp / "curves.parquet")
    for tid in confirm["trial_id"]:
        steps = list(curves[curves["trial_id"] == tid]["step"])
        assert steps == expected_steps(**_KNOBS), (tid, steps)
    # The run in flight was continued from its checkpoint by another process, not restarted.
    lines = result_lines(folder, trial)
    after = [r for r in lines if r["pid"] != lines[0]["pid"]]
    assert after and after[0]["resumed_from"] > 0 and after[-1]["final"], lines[-3:]
    # The search's own rows are untouched.
    assert sorted(trials["role"]) == ["confirm", "confirm", "reference", "search"]
