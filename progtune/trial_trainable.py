"""What runs on Ray workers: the Tune trainable and the target board.

One Tune trial = one complete `progtune.train.train` run, in Tune's process (`run_trial`) or on
N data-parallel Ray Train workers (progtune.trial_workers); both run `train_trial`. Trials get a
small frozen `TrialSetup` (through `tune.with_parameters`), never the driver's state.
"""

from __future__ import annotations

import functools
import logging
import math
import operator
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
    threads: int  # torch threads per trial (per worker with workers > 1)
    stop_at_target: bool
    target_loss: float | None  # --target-loss; else the board publishes the reference's
    board: Any  # TargetBoard actor handle
    eval_at_flops: list[float] | None = None  # ASHA's rungs: evaluate where they decide
    # asha-after-growth: the rungs count from the planned start of a trial's last stage, and
    # trials report `flops_after_growth` (vocab_size: for that planning)
    rungs_after_growth: bool = False
    vocab_size: int = 0
    workers: int = 1  # data-parallel workers per trial (progtune.trial_workers when > 1)
    cpus_per_worker: float = 1.0  # CPUs each worker holds (workers > 1)
    gpus_per_worker: float = 0.0  # GPUs each worker holds (workers > 1: 0 or 1)


class TrialReports(Protocol):
    """Where a trial's rows go and where its last checkpoint comes from: Tune (one process) or
    Ray Train (each data-parallel worker; progtune.trial_workers)."""

    leader: bool  # the process whose rows count and who asks the board (rank 0)
    device: str | None  # runtime.device for this process (a worker's own GPU), None: the config's

    def last_checkpoint(self) -> Any:
        """The latest checkpoint reported by an earlier attempt of this trial (a Ray Checkpoint)
        or None."""

    def send(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """Report `metrics`, with the checkpoint folder just written (None: no checkpoint)."""


def trial_config(config: dict, setup: TrialSetup) -> Config:
    """The full config of a trial from Tune's config (proposed knobs, or a point and a seed)."""
    overrides = {k: v for k, v in config.items() if k in KNOB_TYPES}
    if "point" in config:
        overrides.update(setup.points[config["point"]])
    overrides.update(setup.pinned)
    if "repeat_seed" in config:  # after the pins: a pinned seed is where the repeats start
        overrides["seed"] = config["repeat_seed"]
    overrides["runtime.threads"] = setup.threads
    cfg = with_overrides(from_flat(setup.base), overrides)
    if not setup.eval_at_flops:
        return cfg
    start = rung_origin(cfg, setup)
    return with_overrides(cfg, {"eval.at_flops": [start + m for m in setup.eval_at_flops]})


def rung_origin(cfg: Config, setup: TrialSetup) -> float:
    """Where a trial's ASHA clock starts: 0, or (asha-after-growth) the planned FLOPs at the
    start of its last stage."""
    from progtune.budget import last_stage_start_flops

    return last_stage_start_flops(cfg, setup.vocab_size) if setup.rungs_after_growth else 0.0


def flops_after_growth(row: dict, cfg: Config, start: float) -> float:
    """asha-after-growth's clock: 0 until the trial's last growth (a row of an earlier stage,
    the growth row itself included), then FLOPs past `start` (its last stage's planned start)."""
    if row["stage"] < len(cfg.stages.unique_layers) - 1:
        return 0.0
    return max(0.0, float(row["flops"]) - start)


def _board_target(setup: TrialSetup) -> float | None:
    if setup.target_loss is not None:
        return setup.target_loss
    try:
        return ray.get(setup.board.get.remote(), timeout=10)
    except Exception:  # no board yet (or gone): the target is simply unknown
        return None


def restore_latest(previous: Any, work: str) -> tuple[str | None, int, list[dict]]:
    """(folder to resume from, its step, its curve rows) of checkpoint `previous` (a Ray
    Checkpoint) unpacked under `work`; (None, 0, []) without one."""
    from progtune.train import checkpoint_meta

    if previous is None:
        return None, 0, []
    folder = previous.to_directory(os.path.join(work, "restored"))
    meta = checkpoint_meta(folder)
    return folder, int(meta["step"]), meta["curve"]


def run_trial(config: dict, data: Any = None, setup: TrialSetup | None = None) -> None:
    """The Tune trainable of a trial in one process: one progressive training, row by row."""
    assert setup is not None
    train_trial(config, data, setup, _TuneReports())


def train_trial(config: dict, data: Any, setup: TrialSetup, reports: TrialReports) -> None:
    """One trial's training, continued from its latest checkpoint, with a report per curve row
    and a final summary row: the one copy of a trial's code, for Tune's process and for each
    Ray Train worker alike."""
    from progtune.train import train

    logging.getLogger("ray").setLevel(logging.WARNING)  # no line per checkpoint in the console
    started = time.perf_counter()
    cfg = trial_config(config, setup)
    if reports.device is not None:
        cfg = with_overrides(cfg, {"runtime.device": reports.device})
    work = tempfile.mkdtemp(prefix="progtune-trial-")
    try:
        resume_from, resumed_from, restored = restore_latest(reports.last_checkpoint(), work)
        clock = _asha_clock(cfg, setup)

        def report(row: dict, checkpoint: Any) -> bool:
            metrics = {**row, "objective": math.nan, "final": False, "resumed_from": resumed_from}
            metrics.update(clock(row))
            if restored:  # the rows up to the checkpoint, in case the driver never wrote them
                metrics["restored_rows"] = restored.copy()
                restored.clear()
            reports.send(metrics, checkpoint)
            if reports.leader and setup.stop_at_target and row["eval_loss"] is not None:
                target = _board_target(setup) if row["step"] > 0 else None
                return target is not None and row["eval_loss"] <= target
            return False

        ckpt_dir = os.path.join(work, "checkpoint")
        result = train(cfg, report, data=data, checkpoint_dir=ckpt_dir, resume_from=resume_from)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    status = result.status
    if status == "stopped":  # only --stop-at-target stops from inside: the target was reached
        status = "completed"
    final = {"objective": math.nan, "final": True, "resumed_from": resumed_from, "status": status}
    final.update(result.totals(), trial_wall_s=time.perf_counter() - started)
    reports.send({**result.curve[-1], **final}, None)


def asha_time_attr(after_growth: bool) -> str:
    """The metric a trial reports as ASHA's clock (Tune's time_attr), not a results column."""
    return "flops_after_growth" if after_growth else "asha_flops"


def _asha_clock(cfg: Config, setup: TrialSetup) -> Any:
    """row -> the extra metric a curve row reports: ASHA's time attribute, `asha_flops` (the
    row's FLOPs, asha) or `flops_after_growth` (asha-after-growth); none without ASHA. Not on
    the row at the run's last step (nor on the final summary): ASHA skips a result without it,
    so a rung that falls at the very end (a run of exactly a scratch budget's FLOPs meets the
    last rung there; a last stage at full depth over half the budget ends on the 1/2 rung under
    asha-after-growth) cannot stop a trial that has finished, which would lose its result."""
    from progtune.budget import planned_steps

    if not setup.eval_at_flops:  # set exactly when a search runs either ASHA
        return lambda row: {}
    last = planned_steps(cfg)
    name = asha_time_attr(setup.rungs_after_growth)
    if setup.rungs_after_growth:
        clock = functools.partial(flops_after_growth, cfg=cfg, start=rung_origin(cfg, setup))
    else:
        clock = operator.itemgetter("flops")
    return lambda row: {} if row["step"] >= last else {name: clock(row)}


class _TuneReports:
    """A trial in Tune's own process: Tune's checkpoint and `tune.report`."""

    leader: bool = True
    device: str | None = None

    def last_checkpoint(self) -> Any:
        return tune.get_checkpoint()

    def send(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is not None:
            checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir))
            tune.report(metrics, checkpoint=checkpoint)
        else:
            tune.report(metrics)


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
