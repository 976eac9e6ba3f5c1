"""The reference run is checkpointed and retried like a trial (issue 12, part 5).

Fast: its checkpoint store in the experiment's storage (a local folder and a file:// URI) and the
reference task continuing from it, without Ray. Slow, with real processes: the process training
the reference SIGKILLed (Ray retries the task: it continues from its last checkpoint), then the
driver SIGKILLed and the search resumed (the reference continues again, not from step 0); the
finished reference curve equals an uninterrupted `progtune train` of its config exactly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from search_processes import (
    Driver,
    assert_every_trial_once,
    expected_steps,
    kill_marked,
    read_or_none,
    run_cli,
    wait_for,
)
from test_faults_trials import CURVE_COLUMNS, _knob_overrides

from progtune.config import config_hash, flatten, with_overrides
from progtune.experiment_storage import StoredCheckpoint
from progtune.reference_run import reference_store_uri, reference_task
from progtune.results import read_curves, read_trials
from progtune.search_state import reference_config


def _storage(tmp: Path, kind: str) -> str:
    return str(tmp / "res") if kind == "local" else f"file://{tmp / 'res'}"


# ---------------------------------------------------------------------------- fast: the store
@pytest.mark.parametrize("kind", ["local", "file-uri"])
def test_stored_checkpoint_keeps_the_latest_upload_of_its_config(tmp_path, kind):
    store = StoredCheckpoint(f"{_storage(tmp_path, kind)}/exp/reference_run")
    assert store.latest("abc") is None and store.download("abc", tmp_path / "none") is None
    for step in (4, 8):
        local = tmp_path / f"written-{step}"
        (local / "sub").mkdir(parents=True)
        (local / "state.pt").write_bytes(bytes([step]) * 100)
        (local / "sub" / "meta.json").write_text(json.dumps({"step": step}))
        store.upload(local, step, "abc")
    assert store.latest("abc")["step"] == 8
    assert store.latest("other config") is None  # never another config's checkpoint
    got = store.download("abc", tmp_path / "got")
    assert (got / "state.pt").read_bytes() == bytes([8]) * 100
    assert json.loads((got / "sub" / "meta.json").read_text()) == {"step": 8}
    folder = tmp_path / "res" / "exp" / "reference_run"
    assert sorted(p.name.split("_")[1] for p in folder.glob("checkpoint_*")) == ["000000008"]
    store.remove()
    assert not folder.exists() and store.latest("abc") is None


# ---------------------------------------------------------------------------- fast: the task
class _Killed(Exception):
    """Stands for the process dying right after the checkpoint of a given step was stored."""


def _board(rows: list[dict], die_after_step: int | None = None) -> SimpleNamespace:
    def add_row(row: dict) -> None:
        rows.append(row)
        if die_after_step is not None and row["step"] == die_after_step:
            raise _Killed

    return SimpleNamespace(add_row=SimpleNamespace(remote=add_row))


def _curve(rows: list[dict]) -> list[tuple]:
    return [tuple(r[c] for c in CURVE_COLUMNS) for r in rows]


@pytest.mark.parametrize("kind", ["local", "file-uri"])
def test_reference_task_continues_from_its_stored_checkpoint(
    tmp_path, kind, tiny_cfg, tiny_data, one_torch_thread
):
    cfg = with_overrides(reference_config(tiny_cfg), {"eval.points": 4})
    flat, store_uri = flatten(cfg), reference_store_uri(f"{_storage(tmp_path, kind)}/exp")
    plain = reference_task(flat, tiny_data, 1, _board([]), str(tmp_path / "plain"))
    eval_steps = [r["step"] for r in plain["curve"]]
    assert plain["resumed_from"] == 0 and len(eval_steps) == 5, eval_steps
    die_at = eval_steps[2]  # its checkpoint is stored, then the process dies
    with pytest.raises(_Killed):
        reference_task(flat, tiny_data, 1, _board([], die_at), store_uri)
    assert StoredCheckpoint(store_uri).latest(config_hash(cfg))["step"] == die_at
    live: list[dict] = []
    retried = reference_task(flat, tiny_data, 1, _board(live), store_uri)
    assert retried["resumed_from"] == die_at and retried["status"] == "completed"
    assert _curve(retried["curve"]) == _curve(plain["curve"])  # exactly
    assert retried["final"]["total_flops"] == plain["final"]["total_flops"]
    # Live rows: the curve up to the checkpoint again, then the new rows, all marked with it.
    assert [r["step"] for r in live] == eval_steps and {r["resumed_from"] for r in live} == {die_at}


# ---------------------------------------------------------------------------- slow: real processes
# The reference checkpoints at each of 16 evaluations. Its budget comes from a config file, not
# the command line, so the search space can give its one trial a 24th of it: the trial is done
# long before the driver is killed, and only the reference is in flight then (Tune saves its own
# experiment state at most every 10 s, so a trial checkpointing faster than that can be restored
# from a checkpoint it already deleted: not what this file tests).
_KNOBS = {"budget.tokens": 786432, "eval.points": 16}  # 3072 steps: ~25 s per 1024 here
_CONFIG = "budget:\n  tokens: 786432\neval:\n  points: 16\n"
_SHORT_TRIALS = '''"""One short trial beside a long reference."""


def define(trial):
    return {"budget.tokens": 32768, "lr.peak": trial.suggest_float("lr.peak", 2e-3, 4e-3)}
'''
_SEARCH = ["--space", "short.py", "--config", "base.yaml", "--preset", "tiny", "--num-samples",
           "1", "--cpus-per-trial", "1"]  # fmt: skip
_RETRIED = re.compile(r"reference run retried: continues from its checkpoint at step (\d+)")
_CONTINUES = re.compile(r"reference run continues from its checkpoint at step (\d+)")


def _stored_step(exp: Path) -> int:
    """The step of the reference's latest stored checkpoint (0 when none yet)."""
    try:
        return json.loads((exp / "reference_run" / "latest.json").read_text())["step"]
    except (OSError, ValueError):
        return 0


def _search_trial_done(exp: Path) -> bool:
    """trials.parquet records the search trial as completed."""
    trials = read_or_none(read_trials, exp / "trials.parquet")
    return trials is not None and "completed" in set(trials[trials.role == "search"]["status"])


class Killed:
    """A search whose reference process, then whose driver, was SIGKILLed; then resumed."""

    tmp: Path
    exp: Path
    first: Driver
    killed_at: int  # the reference's stored checkpoint when its process was killed
    driver_killed_at: int  # ... when the driver was killed
    resumed: object  # the --resume run (CompletedProcess)


@pytest.fixture(scope="module")
def reference_killed(tmp_path_factory) -> Killed:
    out = Killed()
    tmp = out.tmp = tmp_path_factory.mktemp("refkill")
    out.exp = tmp / "res" / "r"
    (tmp / "short.py").write_text(_SHORT_TRIALS)
    (tmp / "base.yaml").write_text(_CONFIG)
    d = out.first = Driver(tmp, [*_SEARCH, "--storage", str(tmp / "res"), "--name", "r"])
    total = expected_steps(**_KNOBS)[-1]
    try:

        def reference_process():
            step = _stored_step(out.exp)
            pids = [p for p, c in d.processes().items() if c.startswith("ray::reference_task")]
            return 0 < step < total // 2 and len(pids) == 1 and (step, pids[0])

        _, pid = wait_for(reference_process, 300, d, "the reference's checkpoint")
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        out.killed_at = _stored_step(out.exp)  # read after the kill: no upload can follow it
        wait_for(lambda: _RETRIED.search(d.stdout), 120, d, "the reference retried")
        wait_for(lambda: _search_trial_done(out.exp), 300, d, "the search trial's end")
        done_at = time.time()

        def retried_checkpoint_and_trial_saved() -> bool:
            return _stored_step(out.exp) > out.killed_at and time.time() - done_at > 12

        wait_for(retried_checkpoint_and_trial_saved, 300, d, "a checkpoint of the retry")
        assert _stored_step(out.exp) < total, "the reference finished before the driver kill"
        d.processes()  # note its Ray temp folder
        os.kill(d.pid, signal.SIGKILL)
        d.wait(60)
        for folder in d.ray_tmp:  # a crashed machine takes its Ray along
            kill_marked(folder + "/")
        time.sleep(1)
        out.driver_killed_at = _stored_step(out.exp)  # its Ray is gone: the last upload
        out.resumed = run_cli(tmp, "search", "--resume", "--name", "r", "--storage",
                              str(tmp / "res"))  # fmt: skip
    finally:
        d.stop()
    return out


@pytest.mark.slow
def test_reference_process_sigkill_is_retried_from_its_checkpoint(reference_killed):
    run = reference_killed
    retried = [int(m) for m in _RETRIED.findall(run.first.stdout)]
    assert retried and retried[0] == run.killed_at > 0, run.first.shown()
    assert "reference run (from scratch, full depth) started" in run.first.stdout


@pytest.mark.slow
def test_resumed_search_continues_the_reference_and_its_curve_is_uninterrupted(reference_killed):
    run = reference_killed
    shown = run.resumed.stdout[-3000:] + run.resumed.stderr[-3000:]
    assert run.resumed.returncode == 0, shown
    continued = [int(m) for m in _CONTINUES.findall(run.resumed.stdout)]
    assert continued == [run.driver_killed_at] and continued[0] > run.killed_at, shown
    assert "reference run (from scratch, full depth) started" not in run.resumed.stdout, shown
    # ... and the task really did (the driver's line above reads only the stored marker).
    finished = f"reference run completed (continued from its checkpoint at step {continued[0]})"
    assert finished in run.resumed.stdout, shown
    trials = assert_every_trial_once(run.exp, 1)
    assert not (run.exp / "reference_run").exists()  # recorded: its checkpoint is gone
    ref = trials[trials["role"] == "reference"].iloc[0]
    curves = read_curves(run.exp / "curves.parquet")
    curve = curves[curves["trial_id"] == ref["trial_id"]].reset_index(drop=True)
    assert list(curve["step"]) == expected_steps(**_KNOBS)
    plain = run_cli(run.tmp, "train", "--preset", "tiny", "--out", str(run.tmp / "plain"),
                    "--quiet", *_knob_overrides(ref), "runtime.threads=1")  # fmt: skip
    assert plain.returncode == 0, plain.stdout[-2000:] + plain.stderr[-2000:]
    plain_curve = read_curves(run.tmp / "plain" / "curves.parquet")
    for col in CURVE_COLUMNS:
        pd.testing.assert_series_equal(curve[col], plain_curve[col], check_exact=True, obj=col)
    plain_row = read_trials(run.tmp / "plain" / "trials.parquet").iloc[0]
    assert plain_row["config_hash"] == ref["config_hash"]
    for col in ("final_eval_loss", "total_flops", "total_tokens", "steps"):
        assert ref[col] == plain_row[col], col


@pytest.mark.slow
def test_reference_failed_for_good_says_how_to_go_on_and_resume_retries_it(tmp_path, drivers):
    """--max-failures 0: one kill fails it for good. The trial is kept, exit 1, one line says how
    to give a target; --resume then continues the reference from its checkpoint."""
    exp = tmp_path / "res" / "f"
    (tmp_path / "short.py").write_text(_SHORT_TRIALS)
    (tmp_path / "base.yaml").write_text(_CONFIG)
    d = drivers(tmp_path, *_SEARCH, "--max-failures", "0", "--storage", str(tmp_path / "res"),
                "--name", "f")  # fmt: skip

    def reference_process():
        pids = [p for p, c in d.processes().items() if c.startswith("ray::reference_task")]
        return _stored_step(exp) > 0 and pids

    os.kill(wait_for(reference_process, 300, d, "the reference's checkpoint")[0], signal.SIGKILL)
    assert d.wait(600) == 1, d.shown()
    lines = [ln for ln in d.stderr.splitlines() if "reference run failed for good" in ln]
    assert len(lines) == 1, d.shown()
    assert lines[0].startswith("reference run failed for good (") and "died" in lines[0], lines
    assert lines[0].endswith(
        ": no target loss; rerun with --resume --target-loss X (e.g. the final loss of a finished "
        "run) to score the trials, or --resume alone to try it again from its last checkpoint"
    ), lines[0]
    trials = read_trials(exp / "trials.parquet")
    ref, trial = trials[trials.role == "reference"].iloc[0], trials[trials.role == "search"].iloc[0]
    assert ref["status"] == "failed" and ref["error"], ref["error"]
    assert trial["status"] == "completed" and pd.isna(trial["objective"])  # kept, no target yet
    stored = _stored_step(exp)
    assert stored > 0  # a failed reference keeps its checkpoint for --resume

    resumed = run_cli(tmp_path, "search", "--resume", "--name", "f", "--storage",
                      str(tmp_path / "res"))  # fmt: skip
    shown = resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert resumed.returncode == 0, shown
    assert f"reference run continues from its checkpoint at step {stored}" in resumed.stdout, shown
    trials = assert_every_trial_once(exp, 1)
    assert trials["target_loss"].notna().all() and trials["objective"].notna().all(), trials
