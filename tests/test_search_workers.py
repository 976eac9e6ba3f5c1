"""A trial on N data-parallel workers (issue 12): `progtune search --workers-per-trial 2` trains
each trial through Ray Train's TorchTrainer on 2 gloo workers x 1 CPU, which fit a 2-core
machine because the trial's own process holds no CPU.

Fast: how --workers-per-trial and --gpus-per-trial lay a trial out, and their bad combinations
(exit 2, one line, nothing written).
Slow (real processes, local Ray on 127.0.0.1, the `tiny` preset):
1. a worker SIGKILLed mid-training: Tune retries the trial and Ray Train restores the run's
   latest checkpoint; the curve has every row once and equals an uninterrupted run of the same
   config on 2 local workers (`progtune train --workers-per-trial 2`) bitwise; tokens and
   FLOPs equal a 1-process run exactly (counted once for the global batch), its losses within
   LOSS_RTOL; trials.parquet says workers == 2;
2. the driver interrupted (SIGINT, exit 130) mid-trial: `--resume` continues the trial from its
   checkpoint and finishes it.
"""

from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path

import pandas as pd
import pytest

from progtune.cli import main
from progtune.errors import ProgtuneError
from progtune.search_settings import trial_layout

# 1 process vs 2 workers, the same global batch: each worker sums half of a micro-batch and DDP
# averages their gradients - sums in another order (and bf16 autocast, where the CPU has it,
# rounds the halves' activations on their own), so the weights drift apart by rounding over
# 1024 steps. Measured on this preset (Xeon, bf16): at most 4.2e-4 relative (eval_loss), 6.6e-5
# (train_loss); 2e-3 leaves a 5x margin, below what a defect gives (a gradient off by the world
# size, a share counted twice, another depth: 1e-2 and more).
LOSS_RTOL = 2e-3
_KNOBS = ["seed=0", "budget.tokens=262144", "eval.points=16"]  # 1024 steps, a row every 64
_HALF = 512
_EXACT = ["step", "tokens", "flops", "stage", "unique_layers", "mean_depth", "lr"]
_LOSSES = ["train_loss", "eval_loss"]


# ---------------------------------------------------------------------------- the layout
@pytest.mark.parametrize(
    ("workers", "gpus", "layout"),
    [
        (1, None, (1, None)),  # GPUs decided once Ray sees the cluster
        (1, 0.0, (1, 0.0)),
        (1, 0.25, (1, 0.25)),  # one process on a quarter of a GPU, as before
        (1, 1.0, (1, 1.0)),
        (1, 4.0, (4, 1.0)),  # --gpus-per-trial 4: four workers of one GPU each
        (4, 4.0, (4, 1.0)),
        (2, None, (2, None)),
        (2, 0.0, (2, 0.0)),  # CPU workers
    ],
)
def test_trial_layout(workers, gpus, layout):
    assert trial_layout(workers, gpus) == layout


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--workers-per-trial", "0"], "--workers-per-trial must be >= 1"),
        (["--gpus-per-trial", "1.5"], "must be a whole number"),
        (["--workers-per-trial", "2", "--gpus-per-trial", "1"], "pass --gpus-per-trial 2"),
        (["--workers-per-trial", "2", "--gpus-per-trial", "4"], "pass --gpus-per-trial 2"),
        (["--workers-per-trial", "3"], "budget.batch_size: 8 sequences do not split evenly"),
        (["--workers-per-trial", "2", "--scheduler", "asha"], "needs a Ray cluster (--address)"),
    ],
)
def test_bad_worker_flags_are_one_line_and_write_nothing(tmp_path, capsys, flags, says):
    args = ["search", "--preset", "tiny", "--num-samples", "1", "--storage",
            str(tmp_path / "res"), "--name", "n", *flags]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "res").exists()


def test_layout_refuses_fractional_gpus_per_worker():
    with pytest.raises(ProgtuneError, match="one whole GPU"):
        trial_layout(2, 0.5)


# ---------------------------------------------------------------------------- 1. worker SIGKILL
def _train_workers(driver) -> list[int]:
    """Ray Train's worker processes of this search (below its driver, as its whole Ray is)."""
    return [p for p, cmd in driver.processes().items() if cmd.startswith("ray::RayTrainWorker")]


def _plain_run(tmp: Path, out: str, overrides: list[str], *extra: str) -> pd.DataFrame:
    """`progtune train` of the same knobs; its curve."""
    from search_processes import run_cli

    from progtune.results import read_curves

    done = run_cli(tmp, "train", "--preset", "tiny", "--out", str(tmp / out), "--quiet",
                   *extra, *overrides, "runtime.threads=1")  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return read_curves(tmp / out / "curves.parquet")


@pytest.mark.slow
def test_worker_sigkill_continues_from_checkpoint_and_matches_plain_runs(tmp_path, drivers):
    from search_processes import (
        assert_every_trial_once,
        expected_steps,
        live_trials,
        result_lines,
        wait_for,
    )
    from test_faults_trials import _knob_overrides

    from progtune.results import read_curves

    d = drivers(tmp_path, "--space", "smoke", "--preset", "tiny", "--num-samples", "1",
                "--storage", str(tmp_path / "res"), "--name", "w", "--cpus-per-trial", "1",
                "--workers-per-trial", "2", *_KNOBS)  # fmt: skip
    exp = tmp_path / "res" / "w"

    def training():
        live, workers = live_trials(exp, _HALF), _train_workers(d)
        return live and len(workers) == 2 and (next(iter(live)), workers)

    tid, workers = wait_for(training, 400, d, "the trial's first rows on 2 workers")
    os.kill(workers[0], signal.SIGKILL)
    assert d.wait(600) == 0, d.shown()

    trials = assert_every_trial_once(exp, 1)
    trial = trials[trials["trial_id"] == tid].iloc[0]
    assert trial["workers"] == 2 and trial["threads"] == 1, trial[["workers", "threads"]]
    lines = result_lines(exp, tid)
    resumed = [r for r in lines if r["resumed_from"] > 0]
    assert resumed and resumed[-1]["final"], [(r["step"], r["resumed_from"]) for r in lines]
    assert lines[0]["resumed_from"] == 0

    curves = read_curves(exp / "curves.parquet")
    curve = curves[curves["trial_id"] == tid].reset_index(drop=True)
    assert list(curve["step"]) == expected_steps(**{"budget.tokens": 262144, "eval.points": 16})
    overrides = _knob_overrides(trial)
    # Uninterrupted on 2 workers (local gloo processes): the same numbers, bitwise.
    two = _plain_run(tmp_path, "two", overrides, "--workers-per-trial", "2")
    for col in _EXACT + _LOSSES:
        pd.testing.assert_series_equal(curve[col], two[col], check_exact=True, obj=col)
    # One process, the same global batch: the same tokens and FLOPs, losses within tolerance.
    one = _plain_run(tmp_path, "one", overrides)
    for col in _EXACT:
        pd.testing.assert_series_equal(curve[col], one[col], check_exact=True, obj=col)
    for col in _LOSSES:
        pd.testing.assert_series_equal(curve[col], one[col], rtol=LOSS_RTOL, obj=col)


# ---------------------------------------------------------------------------- 2. --resume
@pytest.mark.slow
def test_ctrl_c_then_resume_continues_the_trial_on_workers(tmp_path, drivers):
    from search_processes import (
        PROGTUNE,
        assert_every_trial_once,
        live_trials,
        result_lines,
        run_cli,
        wait_for,
    )

    d = drivers(tmp_path, "--space", "smoke", "--preset", "tiny", "--num-samples", "1",
                "--storage", str(tmp_path / "res"), "--name", "r", "--cpus-per-trial", "1",
                "--workers-per-trial", "2", *_KNOBS)  # fmt: skip
    exp = tmp_path / "res" / "r"
    tid = wait_for(lambda: next(iter(live_trials(exp, _HALF)), None), 400, d, "trial rows")
    os.kill(d.pid, signal.SIGINT)
    assert d.wait(300) == 130, d.shown()
    lines = d.stderr.splitlines()
    at = [i for i, ln in enumerate(lines) if "continue with:" in ln]
    command = shlex.split(lines[at[-1] + 1])
    d.stop()
    assert "--workers-per-trial" not in command  # search.json keeps the layout

    resumed = run_cli(tmp_path, *command[1:], exe=[PROGTUNE])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = assert_every_trial_once(exp, 1)
    assert list(trials[trials["role"] == "search"]["workers"]) == [2]
    rows = result_lines(exp, tid)
    after = [r for r in rows if r["resumed_from"] > 0]
    assert after and after[-1]["final"], [(r["step"], r["resumed_from"]) for r in rows]


# ---------------------------------------------------------------------------- 3. one run, a task
_ONE_RUN_FROM_A_TASK = """
import json, shutil, sys
from progtune.local_ray import prepare_local_ray_env

tmp_root = prepare_local_ray_env()
import ray

from progtune.config import resolve
from progtune.data import prepare_data
from progtune.trial_workers import driver_resources, train_on_workers

cfg = resolve("tiny", overrides={"data.cache_dir": sys.argv[1], "runtime.threads": 1})
data = prepare_data(cfg.data)
ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
         _temp_dir=tmp_root, logging_level="ERROR")
task = ray.remote(train_on_workers).options(num_cpus=0, memory=driver_resources()["memory"])
kw = dict(workers=2, cpus_per_worker=1, gpus_per_worker=0, run_name="ref", storage=sys.argv[2])


@ray.remote(num_cpus=0)
class Steps:  # the rows rank 0 reported
    def __init__(self):
        self.steps = []

    def add(self, step):
        self.steps.append(step)

    def take(self):
        steps, self.steps = self.steps, []
        return steps


steps = Steps.remote()
report = lambda row, checkpoint: steps.add.remote(row["step"]) and False
first = ray.get(task.remote(cfg, data, report, **kw))
first["reported"] = ray.get(steps.take.remote())
again = ray.get(task.remote(cfg, data, report, **kw))  # the same run: from its last checkpoint
again["reported"] = ray.get(steps.take.remote())
ray.shutdown()
shutil.rmtree(tmp_root, ignore_errors=True)
print(json.dumps({"first": first, "again": again}, default=str))
"""


@pytest.mark.slow
def test_train_on_workers_from_a_plain_task_continues_its_run(
    tmp_path, tiny_cfg, tiny_data, one_torch_thread
):
    import json
    import subprocess
    import sys

    from progtune.train import train

    done = subprocess.run(
        [sys.executable, "-c", _ONE_RUN_FROM_A_TASK, tiny_cfg.data.cache_dir, str(tmp_path / "s")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    first, again = out["first"], out["again"]
    one = train(tiny_cfg, data=tiny_data)  # one process, the same global batch
    assert (first["status"], first["workers"]) == ("completed", 2)
    assert first["reported"] == [r["step"] for r in one.curve]  # rank 0's rows, once each
    for col in _EXACT:
        assert [r[col] for r in first["curve"]] == [r[col] for r in one.curve], col
    assert (first["total_tokens"], first["total_flops"]) == (one.total_tokens, one.total_flops)
    # The second call found the run's final checkpoint: nothing trained again, the same curve.
    assert again["reported"] == [] and again["status"] == "completed"
    for col in _EXACT + _LOSSES:
        assert [r[col] for r in again["curve"]] == [r[col] for r in first["curve"]], col
