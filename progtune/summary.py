"""One run's row for trials.parquet: identity, every knob, totals, compute-to-target, provenance."""

from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

from progtune import __version__
from progtune.config import Config, config_hash, flatten
from progtune.results import saving, speedup, to_target


@functools.cache
def git_sha() -> str | None:
    """The commit of the progtune source tree, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@functools.cache  # a metadata lookup scans every installed package: once per process
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance() -> dict[str, Any]:
    """Versions and source commit: what a result was produced with."""
    return {
        "progtune_version": __version__,
        "git_sha": git_sha(),
        "python_version": platform.python_version(),
        **{f"{lib}_version": _version(lib) for lib in ("torch", "transformers", "ray", "optuna")},
    }


def trial_row(
    cfg: Config,
    result: Any,
    *,
    experiment: str,
    trial_id: str,
    role: str,
    target_loss: float | None = None,
    reference_flops_to_target: float | None = None,
    started_at: dt.datetime | None = None,
    trial_wall_s: float | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """The trials.parquet row of one run (a `progtune.train.TrainResult` or a compatible record).

    With a target, compute-to-target comes from the shared `to_target` on the run's curve; with the
    reference run's FLOPs-to-target too, the saving and speed-up of apollo.md 6.
    """
    reached: dict[str, float | None] = dict.fromkeys(
        ("flops_to_target", "tokens_to_target", "wall_s_to_target")
    )
    if target_loss is not None:
        reached = to_target(result.curve, target_loss)
    flops = reached.get("flops_to_target")
    return {
        "experiment": experiment,
        "trial_id": trial_id,
        "role": role,
        "status": result.status,
        **flatten(cfg),
        "target_loss": target_loss,
        "final_eval_loss": result.final_eval_loss,
        **reached,
        "saving": saving(flops, reference_flops_to_target),
        "speedup": speedup(flops, reference_flops_to_target),
        "total_flops": result.total_flops,
        "total_tokens": result.total_tokens,
        "total_wall_s": result.total_wall_s,
        "eval_wall_s": result.eval_wall_s,
        "checkpoint_wall_s": result.checkpoint_wall_s,
        "trial_wall_s": trial_wall_s,
        "steps": result.steps,
        "error": error,
        "config_hash": config_hash(cfg),
        "data_fingerprint": result.data_fingerprint,
        "device": result.device,
        "threads": result.threads,
        "precision": getattr(result, "precision", None),
        "workers": getattr(result, "workers", None),
        "started_at": started_at or dt.datetime.now(dt.UTC),
        **provenance(),
    }
