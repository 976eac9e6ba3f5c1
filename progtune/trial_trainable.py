"""What runs on Ray workers: the Tune trainable and the target board.

One Tune trial = one complete `progtune.train.train` run. Trials get a small frozen `TrialSetup`
(through `tune.with_parameters`), never the driver's state.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray import tune

from progtune.config import KNOB_TYPES, Config, from_flat, with_overrides

CURVE_KEYS = (
    "step", "tokens", "flops", "wall_s", "stage", "unique_layers", "mean_depth", "lr",
    "train_loss", "eval_loss", "eval_wall_s", "checkpoint_wall_s",
)  # fmt: skip


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one search needs besides its own config (shipped to each trial)."""

    base: dict[str, Any]  # the base config, flattened
    pinned: dict[str, Any]  # knobs pinned on the command line (they win over the space)
    points: list[dict[str, Any]]  # fixed-point spaces: the overrides of each point
    threads: int  # torch threads per trial
    stop_at_target: bool
    target_loss: float | None  # --target-loss; else the board publishes the reference's
    board: Any  # TargetBoard actor handle
    eval_at_flops: list[float] | None = None  # ASHA's rungs: evaluate where they decide


def trial_config(config: dict, setup: TrialSetup) -> Config:
    """The full config of a trial from Tune's config (proposed knobs, or a point and a seed)."""
    overrides = {k: v for k, v in config.items() if k in KNOB_TYPES}
    if "point" in config:
        overrides.update(setup.points[config["point"]])
    overrides.update(setup.pinned)
    if "repeat_seed" in config:  # after the pins: a pinned seed is where the repeats start
        overrides["seed"] = config["repeat_seed"]
    overrides["runtime.threads"] = setup.threads
    if setup.eval_at_flops:
        overrides["eval.at_flops"] = setup.eval_at_flops
    return with_overrides(from_flat(setup.base), overrides)


def _board_target(setup: TrialSetup) -> float | None:
    if setup.target_loss is not None:
        return setup.target_loss
    try:
        return ray.get(setup.board.get.remote(), timeout=10)
    except Exception:  # no board yet (or gone): the target is simply unknown
        return None


def run_trial(config: dict, data: Any = None, setup: TrialSetup | None = None) -> None:
    """The Tune trainable: one progressive training, reported row by row."""
    from progtune.train import checkpoint_meta, train

    assert setup is not None
    logging.getLogger("ray").setLevel(logging.WARNING)  # no line per checkpoint in the console
    started = time.perf_counter()
    cfg = trial_config(config, setup)
    work = tempfile.mkdtemp(prefix="progtune-trial-")
    ckpt_dir = os.path.join(work, "checkpoint")
    resume_from, resumed_from, restored = None, 0, []
    previous = tune.get_checkpoint()
    if previous is not None:
        resume_from = previous.to_directory(os.path.join(work, "restored"))
        meta = checkpoint_meta(resume_from)
        resumed_from, restored = int(meta["step"]), meta["curve"]

    def report(row: dict, checkpoint: Any) -> bool:
        metrics = {**row, "objective": math.nan, "final": False, "resumed_from": resumed_from}
        if restored:  # the rows up to the checkpoint, in case the driver never wrote them
            metrics["restored_rows"] = restored.copy()
            restored.clear()
        if checkpoint is not None:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint)))
        else:
            tune.report(metrics)
        if setup.stop_at_target and row["eval_loss"] is not None and row["step"] > 0:
            target = _board_target(setup)
            return target is not None and row["eval_loss"] <= target
        return False

    try:
        result = train(cfg, report, data=data, checkpoint_dir=ckpt_dir, resume_from=resume_from)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    status = result.status
    if status == "stopped":  # only --stop-at-target stops from inside: the target was reached
        status = "completed"
    last = result.curve[-1]
    tune.report(
        {
            **last,
            "objective": math.nan,
            "final": True,
            "resumed_from": resumed_from,
            "status": status,
            **result.totals(),
            "trial_wall_s": time.perf_counter() - started,
        }
    )


@ray.remote(num_cpus=0)
class TargetBoard:
    """Holds the target loss once known (for --stop-at-target) and the reference run's rows."""

    def __init__(self) -> None:
        self.target: float | None = None
        self.rows: list[dict] = []

    def set(self, target: float | None) -> None:
        self.target = target

    def get(self) -> float | None:
        return self.target

    def add_row(self, row: dict) -> None:
        self.rows.append(row)

    def take_rows(self) -> list[dict]:
        rows, self.rows = self.rows, []
        return rows
