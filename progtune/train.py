"""The only training loop: one progressive (or from-scratch) run, measured and resumable.

    result = train(cfg, report)           # report(row, checkpoint_dir) -> True to stop early

It knows nothing of Ray: the search wraps `report` around `ray.tune.report`, the CLI around a
printer. Every random draw comes from generators the run owns (seeded from `cfg.seed`) and is
checkpointed, so a resumed run reproduces the uninterrupted curve bitwise on the same machine.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch

from progtune.config import Config, config_hash, flatten
from progtune.errors import ConfigError, ProgtuneError
from progtune.model import ProgressiveLM, train_flops
from progtune.sampling import draw_depth
from progtune.schedules import lr_at

CHECKPOINT_FILE = "state.pt"
CHECKPOINT_FORMAT = 1
Report = Callable[[dict[str, Any], "Path | None"], "bool | None"]


@dataclass
class TrainResult:
    status: str  # completed | stopped | diverged
    final_eval_loss: float | None
    curve: list[dict[str, Any]]
    steps: int
    total_tokens: int
    total_flops: float
    total_wall_s: float  # training only
    eval_wall_s: float
    checkpoint_wall_s: float
    device: str
    threads: int
    data_fingerprint: str

    def totals(self) -> dict[str, Any]:
        """Everything but the curve and status: the summary a trial reports at its end."""
        return {k: v for k, v in self.__dict__.items() if k not in ("curve", "status")}


@dataclass
class Plan:
    """The run's step grid, derived from the config only."""

    total_steps: int
    growth_steps: list[int]  # optimizer step after which stage s+1 begins
    eval_steps: list[int]  # evaluation after these steps (0 = before training)
    tokens_per_micro: int

    @classmethod
    def of(cls, cfg: Config) -> Plan:
        b = cfg.budget
        tokens_per_micro = b.batch_size * cfg.model.seq_len
        total = b.tokens // (tokens_per_micro * b.grad_accum)
        growth = [round(x * total) for x in cfg.stages.boundaries]
        if (
            any(g <= 0 for g in growth)
            or any(a >= b for a, b in pairwise(growth))
            or (growth and growth[-1] >= total)
        ):
            raise ConfigError(
                f"stages.boundaries {list(cfg.stages.boundaries)} fall on the same or an edge step "
                f"of a {total}-step run; spread them out or raise budget.tokens"
            )
        points = {round(i * total / cfg.eval.points) for i in range(1, cfg.eval.points + 1)}
        evals = sorted(points | set(growth) | {0, total})
        return cls(total, growth, evals, tokens_per_micro)


@dataclass
class _State:
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


def pick_device(cfg: Config) -> torch.device:
    want = cfg.runtime.device
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device={want} but no CUDA device is visible; use auto or cpu")
    return torch.device(want)


def use_bf16(cfg: Config, device: torch.device) -> bool:
    if cfg.runtime.precision != "auto":
        return cfg.runtime.precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(check and check())


class _Batches:
    """Windows of seq_len + 1 tokens, a seeded permutation per epoch; position = windows taken."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int):
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.n = (len(tokens) - 1) // seq_len
        if self.n < 1:
            raise ProgtuneError(
                f"the training split has {len(tokens)} tokens, fewer than one window of "
                f"model.seq_len={seq_len}; use a larger data.corpus or a shorter model.seq_len"
            )
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def take(self, start: int, count: int) -> torch.Tensor:
        rows = []
        for i in range(start, start + count):
            epoch, pos = divmod(i, self.n)
            if epoch != self._epoch:
                self._epoch = epoch
                self._perm = np.random.default_rng([self.seed, epoch, 0xDA7A]).permutation(self.n)
            off = int(self._perm[pos]) * self.seq_len
            rows.append(self.tokens[off : off + self.seq_len + 1])
        return torch.from_numpy(np.stack(rows).astype(np.int64))


def mask_for_mlm(
    window: torch.Tensor, rng: np.random.Generator, fraction: float, mask_id: int, vocab: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: `fraction` of positions scored; 80 % of them [MASK], 10 % random, 10 % kept."""
    x = window.clone()
    u = torch.from_numpy(rng.random(x.shape))
    scored = u < fraction
    scored[..., 0] |= ~scored.any(dim=-1)  # at least one scored position per row
    targets = torch.where(scored, x, torch.full_like(x, -100))
    choice = torch.from_numpy(rng.random(x.shape))
    random_tokens = torch.from_numpy(rng.integers(0, vocab, x.shape))
    x = torch.where(scored & (choice < 0.8), torch.full_like(x, mask_id), x)
    x = torch.where(scored & (choice >= 0.8) & (choice < 0.9), random_tokens, x)
    return x, targets


def _inputs(cfg: Config, window: torch.Tensor, rng: np.random.Generator, data) -> tuple:
    if cfg.model.arch == "bert":
        return mask_for_mlm(
            window[:, :-1], rng, cfg.model.mask_fraction, data.mask_id, data.vocab_size
        )
    return window[:, :-1], window[:, 1:]


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.AdamW:
    kwargs: dict[str, Any] = {"lr": cfg.lr.peak, "betas": (cfg.lr.beta1, cfg.lr.beta2)}
    groups = _param_groups(model, cfg.lr.weight_decay)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # fused kernels are missing on some devices
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def grow_with_optimizer(
    model: ProgressiveLM, opt: torch.optim.AdamW, k_new: int, cfg: Config, device: torch.device
) -> torch.optim.AdamW:
    """Grow the model and carry the optimizer state by `growth.optimizer_state`.

    keep (reference): a block object keeps its own Adam moments even though it now holds a copy of
    another block; new blocks start empty. copy: every block takes the moments of the block it was
    copied from. reset: a fresh optimizer for all parameters.
    """
    old_state = {name: opt.state.get(p) for name, p in model.named_parameters()}
    mapping = model.grow(k_new)
    new_opt = make_optimizer(model, cfg, device)
    policy = cfg.growth.optimizer_state
    if policy == "reset":
        return new_opt
    for name, p in model.named_parameters():
        source = name
        if policy == "copy" and name.startswith("blocks."):
            _, j, rest = name.split(".", 2)
            source = f"blocks.{mapping[int(j)]}.{rest}"
        state = old_state.get(source)
        if state:
            new_opt.state[p] = {k: v.clone() for k, v in state.items()}
    return new_opt


@torch.no_grad()
def evaluate_batches(
    model: ProgressiveLM, cfg: Config, val_windows: torch.Tensor, data, device, bf16: bool
) -> tuple[list[float], list[int]]:
    """Full-depth held-out loss of each evaluation batch and its scored positions; fixed windows
    and fixed masks, so every run sees the same batches (paired comparisons)."""
    was_training = model.training
    model.eval()
    model.set_depth(cfg.model.n_layers)
    rng = np.random.default_rng(0xE7A1)  # same masks for every run, so losses compare
    losses, counts = [], []
    for i in range(0, len(val_windows), cfg.eval.batch_size):
        x, y = _inputs(cfg, val_windows[i : i + cfg.eval.batch_size], rng, data)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(x.to(device), y.to(device))
        losses.append(float(loss.value))
        counts.append(loss.n_scored)
    model.train(was_training)
    return losses, counts


def evaluate(
    model: ProgressiveLM, cfg: Config, val_windows: torch.Tensor, data, device, bf16: bool
) -> float:
    """Full-depth held-out loss, weighted by scored positions; fixed windows and fixed masks."""
    total, count = 0.0, 0
    for value, n in zip(
        *evaluate_batches(model, cfg, val_windows, data, device, bf16), strict=True
    ):
        total += value * n
        count += n
    return total / count


def _val_windows(cfg: Config, val: np.ndarray) -> torch.Tensor:
    seq = cfg.model.seq_len
    n_all = (len(val) - 1) // seq
    if n_all < 1:
        raise ProgtuneError(
            f"the validation split has {len(val)} tokens, fewer than one window of "
            f"model.seq_len={seq}; lower data.val_every or use a larger data.corpus"
        )
    n = n_all if cfg.eval.max_tokens == 0 else max(1, min(n_all, cfg.eval.max_tokens // seq))
    starts = np.linspace(0, n_all - 1, n).astype(np.int64) * seq  # spread over the whole split
    return torch.from_numpy(np.stack([val[s : s + seq + 1] for s in starts]).astype(np.int64))


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(
    directory: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, st: _State, cfg: Config
) -> None:
    """Atomic: written into a temp folder beside `directory`, then swapped in."""
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


# ---------------------------------------------------------------------------- the loop
def train(
    cfg: Config,
    report: Report | None = None,
    *,
    data=None,
    checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
) -> TrainResult:
    """Run one complete training; `report(row, checkpoint_dir_or_None)` gets every curve row.

    `data`: a prepared `progtune.data.TokenData` (the search ships one to every trial); prepared
    from `cfg.data` when None. `resume_from`: a checkpoint folder written by an earlier run of the
    same config. A `report` returning True stops the run (status `stopped`).
    """
    if data is None:
        from progtune.data import prepare_data

        data = prepare_data(cfg.data)
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    device = pick_device(cfg)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    bf16 = use_bf16(cfg, device)
    plan = Plan.of(cfg)
    ul, n_layers = cfg.stages.unique_layers, cfg.model.n_layers
    batches = _Batches(data.train, cfg.model.seq_len, cfg.seed)
    val = _val_windows(cfg, data.val)

    st = _State()
    payload = load_checkpoint(Path(resume_from)) if resume_from else None
    if payload and payload["config_hash"] != config_hash(cfg):
        raise ProgtuneError(
            "the checkpoint was written by a different config; resume with the same one"
        )
    torch.manual_seed(cfg.seed)  # model init and dropout draw from torch's generator
    k0 = payload["k"] if payload else ul[0]
    model = ProgressiveLM(
        cfg.model, data.vocab_size, k0, cfg.growth.operator, data.eos_id, data.pad_id
    ).to(device)
    opt = make_optimizer(model, cfg, device)
    depth_rng = np.random.default_rng([cfg.seed, 0xDE97])
    if payload:
        model.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
        st = _State(**json.loads(payload["state"]))
        depth_rng.bit_generator.state = st.depth_rng
        torch.set_rng_state(payload["torch_rng"])
        if payload["cuda_rng"]:
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
    model.train()
    status = "completed"
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    evals_done = sum(1 for r in st.curve if r["step"] > 0)

    def emit_row(train_loss: float | None) -> bool:
        nonlocal evals_done
        t0 = time.perf_counter()
        eval_loss = evaluate(model, cfg, val, data, device, bf16)
        st.eval_wall_s += time.perf_counter() - t0
        row = {
            "step": st.step,
            "tokens": st.tokens,
            "flops": st.flops,
            "wall_s": st.wall_s,
            "stage": st.stage,
            "unique_layers": len(model.blocks),
            "mean_depth": st.depth_sum / st.micro_count if st.micro_count else None,
            "lr": lr_at(max(st.step - 1, 0), plan.total_steps, cfg.lr, plan.growth_steps),
            "train_loss": train_loss,
            "eval_loss": eval_loss,
            "eval_wall_s": st.eval_wall_s,
            "checkpoint_wall_s": st.checkpoint_wall_s,
        }
        st.curve.append(row)
        st.depth_sum, st.micro_count, st.loss_sum = 0, 0, 0.0
        written = None
        every = cfg.runtime.checkpoint_every
        if st.step > 0:
            evals_done += 1
        final = st.step == plan.total_steps
        if (
            ckpt_dir
            and st.step > 0
            and math.isfinite(eval_loss)
            and (final or (every and evals_done % every == 0))
        ):
            t0 = time.perf_counter()
            st.depth_rng = depth_rng.bit_generator.state
            save_checkpoint(ckpt_dir, model, opt, st, cfg)
            st.checkpoint_wall_s += time.perf_counter() - t0
            row["checkpoint_wall_s"] = st.checkpoint_wall_s
            written = ckpt_dir
        stop = bool(report(dict(row), written)) if report else False
        return stop or not math.isfinite(eval_loss)

    if not st.curve and emit_row(None):  # a report may stop the run at its first row too
        status = "stopped" if math.isfinite(st.curve[-1]["eval_loss"]) else "diverged"

    while st.step < plan.total_steps and status == "completed":
        # Growth happens once the steps of the previous stage are done (after its boundary row).
        while st.stage < bisect.bisect_right(plan.growth_steps, st.step):
            t0 = time.perf_counter()
            st.stage += 1
            opt = grow_with_optimizer(model, opt, ul[st.stage], cfg, device)
            st.wall_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        lr = lr_at(st.step, plan.total_steps, cfg.lr, plan.growth_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        finite = True
        for _ in range(cfg.budget.grad_accum):
            depth = draw_depth(depth_rng, len(model.blocks), n_layers, cfg.sampling)
            model.set_depth(depth)
            window = batches.take(st.samples, cfg.budget.batch_size)
            st.samples += cfg.budget.batch_size
            mlm_rng = np.random.default_rng([cfg.seed, st.micro_steps, 0x3A5C])
            x, y = _inputs(cfg, window, mlm_rng, data)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(x.to(device), y.to(device))
            (loss.value / cfg.budget.grad_accum).backward()
            value = loss.value.item()
            finite = finite and math.isfinite(value)
            st.micro_steps += 1
            st.tokens += plan.tokens_per_micro
            st.flops += train_flops(
                cfg.model, data.vocab_size, depth, plan.tokens_per_micro, loss.n_scored
            )
            st.depth_sum += depth
            st.micro_count += 1
            st.loss_sum += value
        if finite:
            if cfg.lr.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.lr.grad_clip)
            opt.step()
        st.step += 1
        st.wall_s += time.perf_counter() - t0
        if not finite:
            status = "diverged"
        # Evaluate on the step grid, and once cumulative FLOPs first pass a mark (ASHA's rungs,
        # so a scheduler compares trials at the compute it decides at).
        last_flops = st.curve[-1]["flops"] if st.curve else 0.0
        crossed = any(last_flops < mark <= st.flops for mark in cfg.eval.at_flops)
        if st.step in plan.eval_steps or crossed or not finite:
            train_loss = st.loss_sum / st.micro_count if st.micro_count else None
            stop = emit_row(train_loss)
            last = st.curve[-1]["eval_loss"]
            if not math.isfinite(last) or not finite:
                status = "diverged"
            elif stop and st.step < plan.total_steps:  # at the last row it finished anyway
                status = "stopped"

    final = st.curve[-1]["eval_loss"] if st.curve else None
    return TrainResult(
        status=status,
        final_eval_loss=final if final is not None and math.isfinite(final) else None,
        curve=st.curve,
        steps=st.step,
        total_tokens=st.tokens,
        total_flops=st.flops,
        total_wall_s=st.wall_s,
        eval_wall_s=st.eval_wall_s,
        checkpoint_wall_s=st.checkpoint_wall_s,
        device=str(device),
        threads=torch.get_num_threads(),
        data_fingerprint=data.fingerprint,
    )
