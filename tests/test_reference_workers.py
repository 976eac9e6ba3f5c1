"""The reference run on N data-parallel workers, and the search's slot count (issue 12, 1 + 5).

Fast: `Search.trial_capacity` counts N workers per trial on a pretended cluster; the checkpoint
a reference on N workers would continue from is the latest one in Ray Train's run folder.
Slow (real processes, local Ray on 127.0.0.1, 2 CPUs, the `tiny` preset): a search with
--workers-per-trial 2 trains its reference on 2 Ray Train workers (trials.parquet: workers == 2)
and its curve equals a 2-worker `progtune train` of the reference config bitwise (the same world
size and split: the same sums in the same order; tokens and FLOPs count the global batch once);
a Train worker of the reference SIGKILLed (Ray retries the task: Train continues its run from
the last checkpoint), then the driver interrupted and the search resumed (the reference continues
again): its curve still equals the uninterrupted 2-worker run bitwise, every row once.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from progtune import ray_cluster, search_driver
from progtune.config import with_overrides
from progtune.reference_run import reference_checkpoint, workers_run_name
from progtune.search_driver import Search
from progtune.search_state import reference_config


# ---------------------------------------------------------------------------- fast: slots
@pytest.mark.parametrize(("workers", "slots"), [(1, 4), (2, 2), (4, 1)])
def test_trial_capacity_counts_every_worker_of_a_trial(monkeypatch, workers, slots):
    monkeypatch.setattr(ray_cluster.ray, "cluster_resources", lambda: {"CPU": 4.0})
    monkeypatch.setattr(search_driver, "cluster_can_grow", lambda: False)
    settings = SimpleNamespace(max_concurrent=None, cpus_per_trial=1, workers_per_trial=workers)
    search = Search(settings, setup=None, state=None, gpus=0.0)
    assert search.trial_capacity() == slots
    search.reference = object()  # the reference runs: it holds one trial's slot
    search._slots_read = float("-inf")
    assert search.trial_capacity() == max(1, slots - 1)


def test_trial_capacity_counts_a_trials_gpus_in_all(monkeypatch):
    monkeypatch.setattr(ray_cluster.ray, "cluster_resources", lambda: {"CPU": 64.0, "GPU": 8.0})
    monkeypatch.setattr(search_driver, "cluster_can_grow", lambda: False)
    settings = SimpleNamespace(max_concurrent=None, cpus_per_trial=1, workers_per_trial=4)
    search = Search(settings, setup=None, state=None, gpus=4.0)  # 4 workers x 1 GPU
    assert search.trial_capacity() == 2


# ---------------------------------------------------------------------------- fast: its checkpoint
def test_reference_on_workers_continues_from_trains_latest_checkpoint(tmp_path, tiny_cfg):
    cfg = reference_config(tiny_cfg)
    store = str(tmp_path / "exp" / "reference_run")
    assert reference_checkpoint(store, cfg, 2) is None
    run = tmp_path / "exp" / "reference_run" / workers_run_name(cfg, 2)
    for name, step in [
        ("checkpoint_2026-01-01_00-00-01", 8),
        ("checkpoint_2026-01-01_00-00-02", 16),
    ]:
        (run / name).mkdir(parents=True)
        (run / name / "meta.json").write_text(json.dumps({"step": step, "curve": [{"step": 0}]}))
    (run / "checkpoint_2026-01-01_00-00-03").mkdir()
    (run / "checkpoint_2026-01-01_00-00-03" / "meta.json").write_text('{"st')  # cut short
    assert reference_checkpoint(store, cfg, 2) == {"step": 16, "curve": [{"step": 0}]}
    assert reference_checkpoint(store, cfg, 4) is None  # another world size: not continued
    other = with_overrides(cfg, {"seed": cfg.seed + 1})
    assert reference_checkpoint(store, other, 2) is None  # another config: not continued
    assert reference_checkpoint(store, cfg, 1) is None  # one process keeps its own store


# ---------------------------------------------------------------------------- slow: a search
_KNOBS = ["seed=0", "budget.tokens=32768", "eval.points=4"]


@pytest.mark.slow
def test_search_trains_its_reference_on_the_trials_workers(tmp_path):
    import pandas as pd
    from search_processes import assert_every_trial_once, expected_steps, run_cli
    from test_faults_trials import CURVE_COLUMNS, _knob_overrides

    from progtune.results import read_curves

    done = run_cli(tmp_path, "search", "--space", "smoke", "--preset", "tiny", "--num-samples",
                   "1", "--storage", str(tmp_path / "res"), "--name", "rw", "--cpus-per-trial",
                   "1", "--workers-per-trial", "2", *_KNOBS)  # fmt: skip
    shown = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, shown
    exp = tmp_path / "res" / "rw"
    trials = assert_every_trial_once(exp, 1)
    assert list(trials["workers"]) == [2, 2], trials[["role", "workers"]]
    assert not (exp / "reference_run").exists()  # recorded: its checkpoints are gone
    ref = trials[trials["role"] == "reference"].iloc[0]
    curves = read_curves(exp / "curves.parquet")
    curve = curves[curves["trial_id"] == ref["trial_id"]].reset_index(drop=True)
    assert list(curve["step"]) == expected_steps(**dict(k.split("=") for k in _KNOBS))
    plain = run_cli(tmp_path, "train", "--preset", "tiny", "--out", str(tmp_path / "plain"),
                    "--quiet", "--workers-per-trial", "2", *_knob_overrides(ref),
                    "runtime.threads=1")  # fmt: skip
    assert plain.returncode == 0, plain.stdout[-2000:] + plain.stderr[-2000:]
    plain_curve = read_curves(tmp_path / "plain" / "curves.parquet")
    for col in CURVE_COLUMNS:
        pd.testing.assert_series_equal(curve[col], plain_curve[col], check_exact=True, obj=col)


# ---------------------------------------------------------------------------- slow: kill, resume
_LONG = {"seed": 0, "budget.tokens": 262144, "eval.points": 16}  # 1024 steps, a row every 64
_RETRIED = re.compile(r"reference run retried: continues from its checkpoint at step (\d+)")
_CONTINUES = re.compile(r"reference run continues from its checkpoint at step (\d+)")


def _train_run_step(exp: Path) -> int:
    """The latest step checkpointed in the reference's Ray Train run folder (0: none)."""
    steps = [0]
    for meta in exp.glob("reference_run/workers2_*/checkpoint_*/meta.json"):
        try:
            steps.append(int(json.loads(meta.read_text())["step"]))
        except (ValueError, OSError):  # being written or replaced
            pass
    return max(steps)


@pytest.mark.slow
def test_reference_on_workers_continues_after_a_worker_kill_and_a_resume(tmp_path, drivers):
    import pandas as pd
    from search_processes import PROGTUNE, assert_every_trial_once, run_cli, wait_for
    from test_faults_trials import CURVE_COLUMNS, _knob_overrides

    from progtune.results import read_curves

    knobs = [f"{k}={v}" for k, v in _LONG.items()]
    d = drivers(tmp_path, "--space", "smoke", "--preset", "tiny", "--num-samples", "1",
                "--storage", str(tmp_path / "res"), "--name", "k", "--cpus-per-trial", "1",
                "--workers-per-trial", "2", *knobs)  # fmt: skip
    exp, total = tmp_path / "res" / "k", 1024

    def reference_workers():  # only the reference trains while its run folder grows (2 CPUs)
        workers = [p for p, c in d.processes().items() if c.startswith("ray::RayTrainWorker")]
        step = _train_run_step(exp)
        return 0 < step < total // 3 and len(workers) == 2 and workers

    os.kill(
        wait_for(reference_workers, 400, d, "the reference's first checkpoint")[0], signal.SIGKILL
    )
    retried = wait_for(lambda: _RETRIED.search(d.stdout), 300, d, "the reference retried")
    assert int(retried.group(1)) > 0, d.shown()
    killed_at = int(retried.group(1))
    # Ctrl-C while the retried reference and the trial share the 2 CPUs (one trains, one waits):
    # the search is interrupted, the reference stays on record unfinished.
    os.kill(d.pid, signal.SIGINT)
    assert d.wait(300) == 130, d.shown()
    d.stop()
    interrupted_at = _train_run_step(exp)
    assert killed_at <= interrupted_at < total, (killed_at, interrupted_at)

    resumed = run_cli(tmp_path, "search", "--resume", "--name", "k", "--storage",
                      str(tmp_path / "res"), exe=[PROGTUNE])  # fmt: skip
    shown = resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert resumed.returncode == 0, shown
    assert [int(s) for s in _CONTINUES.findall(resumed.stdout)] == [interrupted_at], shown
    trials = assert_every_trial_once(exp, 1)
    assert list(trials["workers"]) == [2, 2], trials[["role", "workers"]]
    ref = trials[trials["role"] == "reference"].iloc[0]
    curves = read_curves(exp / "curves.parquet")
    curve = curves[curves["trial_id"] == ref["trial_id"]].reset_index(drop=True)
    plain = run_cli(tmp_path, "train", "--preset", "tiny", "--out", str(tmp_path / "plain"),
                    "--quiet", "--workers-per-trial", "2", *_knob_overrides(ref),
                    "runtime.threads=1")  # fmt: skip
    assert plain.returncode == 0, plain.stdout[-2000:] + plain.stderr[-2000:]
    plain_curve = read_curves(tmp_path / "plain" / "curves.parquet")
    for col in CURVE_COLUMNS:  # every row once, bitwise as if never interrupted
        pd.testing.assert_series_equal(curve[col], plain_curve[col], check_exact=True, obj=col)
