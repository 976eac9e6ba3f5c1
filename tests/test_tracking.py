"""`--log mlflow|tensorboard|wandb` (issue 14): written for real, offline, and read back.

One `progtune train --preset tiny` logs to all three backends at once; each backend's own reader
then checks the contract: every resolved knob a parameter by its dotted name, role and status as
tags, one metric point per curve row at step = cumulative tokens, FLOPs as a metric.
"""

from __future__ import annotations

import glob
import json
import struct
from pathlib import Path

import pytest

from progtune.cli import main
from progtune.config import KNOB_TYPES
from progtune.results import read_curves, read_trials

BACKENDS = ("mlflow", "tensorboard", "wandb")


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


needs_all = pytest.mark.skipif(
    not all(map(_have, BACKENDS)), reason="needs progtune[mlflow,tensorboard,wandb]"
)


@pytest.fixture(scope="module")
def tracked_train(tmp_path_factory, tiny_cache_dir):
    """One tiny training run tracked by all three backends; its folder and MLflow URI."""
    import torch

    tmp = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{tmp}/mlflow.db"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("WANDB_DIR", raising=False)
        mp.delenv("WANDB_PROJECT", raising=False)
        mp.chdir(tmp)
        argv = ["train", "--preset", "tiny", "--out", str(tmp / "run"), "--quiet"]
        argv += [f"--log={b}" for b in BACKENDS]
        code = main([*argv, f"data.cache_dir={tiny_cache_dir}"])
    torch.set_num_threads(threads)
    assert code == 0
    return tmp / "run", uri


def _eval_rows(run: Path) -> list[dict]:
    curve = read_curves(run / "curves.parquet").to_dict("records")
    return [r for r in curve if r["eval_loss"] is not None and r["eval_loss"] == r["eval_loss"]]


@needs_all
def test_mlflow_run_holds_knobs_tags_and_one_point_per_evaluation(tracked_train):
    from mlflow.tracking import MlflowClient

    run_dir, uri = tracked_train
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name(run_dir.name).experiment_id])
    assert set(KNOB_TYPES) <= set(run.data.params)
    assert run.data.params["model.n_layers"] == "2"
    assert run.data.tags["role"] == "train" and run.data.tags["status"] == "completed"
    assert run.info.status == "FINISHED"
    rows = _eval_rows(run_dir)
    history = client.get_metric_history(run.info.run_id, "eval_loss")
    assert [m.step for m in history] == [r["tokens"] for r in rows]
    assert [m.value for m in history] == pytest.approx([r["eval_loss"] for r in rows])
    flops = client.get_metric_history(run.info.run_id, "flops")
    assert [m.value for m in flops] == pytest.approx([r["flops"] for r in rows])


@needs_all
def test_tensorboard_event_files_read_back(tracked_train):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = tracked_train
    acc = EventAccumulator(str(run_dir / "tensorboard" / "train"))
    acc.Reload()
    rows = _eval_rows(run_dir)
    scalars = acc.Scalars("eval_loss")
    assert [s.step for s in scalars] == [r["tokens"] for r in rows]
    assert [s.value for s in scalars] == pytest.approx([r["eval_loss"] for r in rows], rel=1e-6)
    assert {"flops", "final_eval_loss"} <= set(acc.Tags()["scalars"])
    texts = {
        t: acc.Tensors(t)[0].tensor_proto.string_val[0].decode() for t in acc.Tags()["tensors"]
    }
    assert texts["role/text_summary"] == "train"
    assert texts["status/text_summary"] == "completed"
    assert "| model.n_layers | 2 |" in texts["knobs/text_summary"]


def wandb_records(run_file: str) -> list:
    """The records of a W&B offline run file (LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, block = Path(run_file).read_bytes(), 32768
    pos, chunks, records = 7, b"", []  # 7: W&B's file header
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        chunks += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


@needs_all
def test_wandb_offline_run_holds_config_and_final_loss(tracked_train):
    run_dir, _ = tracked_train
    (run_file,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "*.wandb"))
    records = wandb_records(run_file)
    # the run record is written at start and again when the run ends (tags, status)
    run = [r.run for r in records if r.WhichOneof("record_type") == "run"][-1]
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert set(KNOB_TYPES) <= set(config) and config["model.n_layers"] == 2
    assert run.display_name == "train" and list(run.tags) == ["train", "completed"]
    summary = {
        u.key: json.loads(u.value_json)
        for r in records
        if r.WhichOneof("record_type") == "summary"
        for u in r.summary.update
        if u.key
    }
    final = read_trials(run_dir / "trials.parquet")["final_eval_loss"].iloc[0]
    assert summary["final_eval_loss"] == pytest.approx(final)
    assert summary["status"] == "completed"
    steps = [r.history.step.num for r in records if r.WhichOneof("record_type") == "history"]
    assert steps == [
        r["tokens"] for r in read_curves(run_dir / "curves.parquet").to_dict("records")
    ]


@pytest.mark.parametrize("command", ["train", "search"])
def test_a_backend_not_installed_is_one_line_naming_the_extra(
    command, tmp_path, monkeypatch, capsys
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    where = (
        ["--out", str(tmp_path / "run")]
        if command == "train"
        else ["--storage", str(tmp_path / "run")]
    )
    code = main([command, "--preset", "tiny", *where, "--log", "mlflow", "--log", "wandb"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        "progtune: error: --log wandb needs the wandb extra: pip install 'progtune[wandb]'"
    ]
    assert not (tmp_path / "run").exists()


@needs_all
@pytest.mark.slow
def test_a_search_tracks_the_reference_and_each_trial_in_all_three(tmp_path):
    """The search path: one run per trial (reference included) in each backend, as in Parquet."""
    import os
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "PROGTUNE_CACHE": str(tmp_path / "cache"), "MLFLOW_TRACKING_URI": uri}
    env.update(WANDB_MODE="offline", MLFLOW_EXPERIMENT_NAME="tracked-search")
    for key in ("WANDB_DIR", "WANDB_PROJECT", "RAY_ADDRESS"):
        env.pop(key, None)
    argv = ["search", "--space", "smoke", "--preset", "tiny", "--num-samples", "1"]
    argv += ["--storage", str(tmp_path / "res"), "--name", "t", *(f"--log={b}" for b in BACKENDS)]
    out = subprocess.run(
        [sys.executable, "-m", "progtune.cli", *argv],
        capture_output=True,
        text=True,
        timeout=420,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    exp = tmp_path / "res" / "t"
    trials = read_trials(exp / "trials.parquet").set_index("trial_id")
    curves = read_curves(exp / "curves.parquet")
    evals = {
        tid: sorted(c.dropna(subset=["eval_loss"])["tokens"])
        for tid, c in curves.groupby("trial_id")
    }
    assert sorted(trials["role"]) == ["reference", "search"]

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tracked-search").experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(trials.index)
    for run in runs:
        tid = run.info.run_name
        assert run.data.tags["role"] == trials.loc[tid, "role"]
        assert run.data.tags["status"] == trials.loc[tid, "status"]
        assert set(KNOB_TYPES) <= set(run.data.params)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")]
        assert steps == evals[tid]

    for tid in trials.index:
        acc = EventAccumulator(str(exp / "tensorboard" / tid))
        acc.Reload()
        assert [s.step for s in acc.Scalars("eval_loss")] == evals[tid]
    assert len(glob.glob(str(exp / "wandb" / "offline-run-*" / "*.wandb"))) == len(trials)


def test_rows_reported_again_after_a_retry_are_logged_once_and_a_failing_backend_is_dropped(
    capsys,
):
    from progtune.tracking import Tracker, TrainRun

    class Recorder:
        name = "recorder"

        def __init__(self):
            self.steps: list[int] = []

        def log_row(self, trial, metrics, tokens):
            self.steps.append(tokens)

        def finish(self, trial, tokens):
            self.steps.append(-tokens)

    class Broken(Recorder):
        name = "broken"

        def log_row(self, trial, metrics, tokens):
            raise ConnectionError("tracking server gone\nmore")

    good, broken = Recorder(), Broken()
    tracker = Tracker([broken, good])
    run = TrainRun("t1", "search", {"model.n_layers": 2})
    for tokens in (4096, 8192, 4096, 8192, 12288):  # a retry from 4096 re-reports 8192
        tracker.log_row(run, {"tokens": tokens, "eval_loss": 1.0, "flops": 2.0 * tokens})
    tracker.finish(run)
    assert good.steps == [4096, 8192, 12288, -12288]
    assert tracker.backends == [good]
    err = capsys.readouterr().err.splitlines()
    assert err == ["progtune: warning: --log broken stopped (tracking server gone)"]
    tracker.finish(run)  # a second end of the same trial changes nothing
    tracker.log_row(run, {"tokens": 16384, "eval_loss": 1.0})
    assert good.steps == [4096, 8192, 12288, -12288]
