"""A training run's checkpoint: its resumable state, written atomically, read back safely."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from progtune.config import Config, config_hash, flatten
from progtune.errors import ProgtuneError

CHECKPOINT_FILE = "state.pt"
CHECKPOINT_FORMAT = 1


@dataclass
class RunState:
    """Everything a checkpoint must carry besides tensors (JSON-serialisable)."""

    step: int = 0
    stage: int = 0
    samples: int = 0  # training windows consumed: the data position
    micro_steps: int = 0
    tokens: int = 0
    flops: float = 0.0
    wall_s: float = 0.0
    eval_wall_s: float = 0.0
    checkpoint_wall_s: float = 0.0
    depth_rng: dict = field(default_factory=dict)
    # accumulators since the last curve row
    depth_sum: int = 0
    micro_count: int = 0
    loss_sum: float = 0.0
    curve: list[dict[str, Any]] = field(default_factory=list)


def save_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    st: RunState,
    cfg: Config,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Atomic: written into a temp folder beside `directory`, then swapped in. `scaler`: the fp16
    grad scaler, whose loss scale a resumed run continues from."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "k": len(model.blocks),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "state": json.dumps(st.__dict__),
        "config_hash": config_hash(cfg),
        "config": json.dumps(flatten(cfg), default=list),
    }
    if scaler is not None:  # only fp16 runs have one; other checkpoints keep their old contents
        payload["grad_scaler"] = scaler.state_dict()
    with open(tmp / CHECKPOINT_FILE, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    # Readable without torch: the step, and the curve up to here (a driver that lost rows can
    # take them back from the checkpoint a retried trial resumes from).
    meta = {"step": st.step, "stage": st.stage, "curve": st.curve}
    (tmp / "meta.json").write_text(json.dumps(meta))
    old = directory.with_name(f".{directory.name}-old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_meta(directory: str | Path) -> dict[str, Any]:
    """A checkpoint's step and curve up to it (cheap: no tensors loaded)."""
    return json.loads((Path(directory) / "meta.json").read_text())


def load_checkpoint(directory: Path) -> dict[str, Any]:
    """Read a progtune checkpoint without arbitrary unpickling (weights_only)."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise ProgtuneError(f"no checkpoint at {path}; run without --resume to start fresh")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ProgtuneError(f"checkpoint {path} has an unknown format; start the run again")
    return payload


def load_checkpoint_of(cfg: Config, directory: str | Path) -> dict[str, Any]:
    """`load_checkpoint`, refusing one written by a different config."""
    payload = load_checkpoint(Path(directory))
    if payload["config_hash"] != config_hash(cfg):
        raise ProgtuneError(
            "the checkpoint was written by a different config; resume with the same one"
        )
    return payload


def restore_checkpoint(
    payload: dict[str, Any],
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    depth_rng: np.random.Generator,
    scaler: torch.amp.GradScaler | None = None,
) -> RunState:
    """Put a loaded checkpoint back into a freshly built model, optimizer, depth generator and
    fp16 grad scaler, and torch's generators (dropout); returns the run state to continue from."""
    model.load_state_dict(payload["model"])
    opt.load_state_dict(payload["optimizer"])
    if scaler is not None and payload.get("grad_scaler"):
        scaler.load_state_dict(payload["grad_scaler"])
    st = RunState(**json.loads(payload["state"]))
    depth_rng.bit_generator.state = st.depth_rng
    torch.set_rng_state(payload["torch_rng"])
    if payload["cuda_rng"]:
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    return st
