"""One training on N data-parallel workers through Ray Train's TorchTrainer (DDP: gloo on CPU,
one GPU per worker with NCCL): the Tune trainable of a trial with --workers-per-trial N, and a
launcher for any single run (`train_on_workers`, e.g. the reference run from a Ray task).

The process that calls TorchTrainer.fit() only drives the workers: it reserves no CPU or GPU
(`driver_resources()`), so 2 workers x 1 CPU fit a 2-core machine. Each worker runs
`progtune.train.train` inside the process group Ray Train initialised; the training loop splits
the global micro-batch across the ranks, reports every curve row on every rank and writes the
checkpoint on rank 0. Ray Train keeps the run's latest checkpoint in `storage/run_name`; a new
fit() of the same name and storage continues from it (Train restores its snapshot there), which
is how a trial retried by Tune (--max-failures) or resumed (--resume) continues.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from progtune.config import Config, flatten, from_flat, with_overrides
from progtune.trial_trainable import TrialSetup, restore_latest, train_trial

DRIVER_MEMORY_BYTES = 256 * 2**20


def driver_resources() -> dict[str, float]:
    """What the process driving a Train run (a Tune trial's own process) reserves: no CPU or
    GPU, only a little memory - every node has that, and Tune refuses a request of nothing."""
    return {"cpu": 0, "gpu": 0, "memory": DRIVER_MEMORY_BYTES}


def run_trial_on_workers(config: dict, data: Any = None, setup: TrialSetup | None = None) -> None:
    """The Tune trainable of a trial on `setup.workers` Ray Train workers, each running
    `train_trial`; rank 0's reports reach Tune through TuneReportCallback. The Train run is
    the trial's folder (its checkpoint_* folders where a 1-process trial's are, for `progtune
    export`), so a retried or resumed trial continues from its latest checkpoint."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    assert setup is not None
    storage = tune.get_context().get_storage()
    fit_on_workers(
        _trial_worker,
        {"config": config, "data": data, "setup": setup},
        workers=setup.workers,
        cpus_per_worker=setup.cpus_per_worker,
        gpus_per_worker=setup.gpus_per_worker,
        run_name=storage.trial_dir_name,  # the trial's own folder: checkpoint_* where Tune's go
        storage=storage.experiment_fs_path,
        filesystem=storage.storage_filesystem,
        callbacks=[TuneReportCallback()],
    )


def _trial_worker(loop_config: dict) -> None:
    setup = loop_config["setup"]
    reports = _TrainReports(setup.gpus_per_worker)
    train_trial(loop_config["config"], loop_config["data"], setup, reports)


def train_on_workers(
    cfg: Config,
    data: Any,
    report: Callable[[dict, Path | None], bool | None] | None,
    *,
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    run_name: str,
    storage: str,
) -> dict[str, Any]:
    """Train `cfg` once on `workers` Ray Train workers; its TrainResult as a dict (status, curve,
    totals). Call it from a Ray task or actor that reserves no CPU (`driver_resources()`) or from
    a driver.

    `report(row, checkpoint_dir)` runs on rank 0 only, in a worker process (it is pickled: send
    rows to an actor); True stops the run. Checkpoints go to `storage`/`run_name` (a folder or
    URI); a later call with the same run name and storage continues from the latest one, and the
    returned curve then holds every row since step 0.
    """
    from ray.util.queue import Queue

    # Train's result holds the metrics of the last checkpoint only: rank 0 hands its result back
    # through a queue.
    results: Queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    loop_config = {"flat": flatten(cfg), "data": data, "report": report, "gpus": gpus_per_worker}
    fit_on_workers(
        _run_worker,
        {**loop_config, "results": results},
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
        run_name=run_name,
        storage=storage,
    )
    try:
        return results.get(timeout=60)
    finally:
        results.shutdown()


def _run_worker(loop_config: dict) -> None:
    from progtune.train import train

    reports = _TrainReports(loop_config["gpus"])
    cfg = from_flat(loop_config["flat"])
    if reports.device is not None:
        cfg = with_overrides(cfg, {"runtime.device": reports.device})
    user_report = loop_config["report"] if reports.leader else None
    work = tempfile.mkdtemp(prefix="progtune-run-")
    try:
        resume_from, _, _ = restore_latest(reports.last_checkpoint(), work)

        def report(row: dict, checkpoint: Path | None) -> bool:
            stop = bool(user_report(row, checkpoint)) if user_report is not None else False
            reports.send(dict(row), checkpoint)
            return stop

        ckpt_dir = os.path.join(work, "checkpoint")
        result = train(cfg, report, data=loop_config["data"], checkpoint_dir=ckpt_dir,
                       resume_from=resume_from)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if reports.leader:
        loop_config["results"].put(dataclasses.asdict(result))


def fit_on_workers(
    loop: Callable[[dict], None],
    loop_config: dict,
    *,
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    run_name: str,
    storage: str,
    filesystem: Any = None,
    callbacks: list | None = None,
) -> None:
    """Run `loop(loop_config)` on `workers` TorchTrainer workers of `cpus_per_worker` CPUs and
    `gpus_per_worker` GPUs each. Raises Train's error when a worker fails: retries are the
    caller's (Tune's --max-failures), each continuing from the run's latest checkpoint."""
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    per_worker = {"CPU": cpus_per_worker}
    if gpus_per_worker > 0:
        per_worker["GPU"] = gpus_per_worker
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=0),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=callbacks or [],
            logging_config=LoggingConfig(log_level="WARNING"),  # no line per report
        ),
    )
    trainer.fit()


class _TrainReports:
    """`train_trial`'s reports on a Ray Train worker: every rank calls `ray.train.report` at
    every row (Train's reports are a barrier), only rank 0 has a checkpoint folder to pass, and
    Train keeps rank 0's metrics. A worker on GPUs trains on its own device."""

    def __init__(self, gpus_per_worker: float):
        import logging

        import ray.train
        import ray.train.torch
        from ray.train.v2._internal.execution import context

        # Train logs every report at INFO under a logger named by its file, outside "ray.train"
        # (which LoggingConfig quiets): a line per curve row and rank.
        logging.getLogger(context.__file__).setLevel(logging.WARNING)
        self.leader: bool = ray.train.get_context().get_world_rank() == 0
        self.device: str | None = None
        if gpus_per_worker > 0:
            self.device = str(ray.train.torch.get_device())

    def last_checkpoint(self) -> Any:
        import ray.train

        return ray.train.get_checkpoint()

    def send(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = None
        if checkpoint_dir is not None:
            checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir))
        ray.train.report(metrics, checkpoint=checkpoint, delete_local_checkpoint_after_upload=False)
