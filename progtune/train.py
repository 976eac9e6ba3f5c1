"""The only training loop: one progressive (or from-scratch) run, measured and resumable.

    result = train(cfg, report)           # report(row, checkpoint_dir) -> True to stop early

It knows nothing of Ray: the search wraps `report` around `ray.tune.report`, the CLI around a
printer. Every random draw comes from generators the run owns (seeded from `cfg.seed`) and is
checkpointed, so a resumed run reproduces the uninterrupted curve bitwise on the same machine.
`train` reads top to bottom: set up (`_Run`), then per step grow into due stages, one
optimizer step, and on the evaluation grid a curve row, a checkpoint when due and the report.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch

from progtune.batches import TrainingWindows, model_inputs, val_windows
from progtune.batches import mask_for_mlm as mask_for_mlm
from progtune.budget import planned_growth_steps, planned_steps
from progtune.checkpoint import CHECKPOINT_FILE as CHECKPOINT_FILE
from progtune.checkpoint import CHECKPOINT_FORMAT as CHECKPOINT_FORMAT
from progtune.checkpoint import (
    RunState,
    load_checkpoint_of,
    restore_checkpoint,
    save_checkpoint,
)
from progtune.checkpoint import checkpoint_meta as checkpoint_meta
from progtune.checkpoint import load_checkpoint as load_checkpoint
from progtune.config import Config
from progtune.data_parallel import Ranks, agreed, all_reduce_sum, sync_unless_last, wrap_model
from progtune.errors import ConfigError
from progtune.memory_plan import check_fits
from progtune.model import ProgressiveLM, train_flops
from progtune.run_device import (
    autocast,
    compile_blocks,
    grad_scaler,
    set_up_process,
)
from progtune.run_device import pick_device as pick_device
from progtune.run_device import use_bf16 as use_bf16
from progtune.sampling import draw_depth
from progtune.schedules import lr_at

Report = Callable[[dict[str, Any], "Path | None"], "bool | None"]
# Names other modules import from here since their code moved (bench/ imports these two).
_Batches = TrainingWindows
_val_windows = val_windows


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
    precision: str = "fp32"  # what runtime.precision resolved to: bf16 | fp16 (autocast) | fp32
    workers: int = 1  # data-parallel ranks that trained the run (world size)

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
        tokens_per_micro = cfg.budget.batch_size * cfg.model.seq_len
        total, growth = planned_steps(cfg), planned_growth_steps(cfg)
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
    model: ProgressiveLM, cfg: Config, val_windows: torch.Tensor, data, device, bf16: bool | str
) -> tuple[list[float], list[int]]:
    """Full-depth held-out loss of each evaluation batch and its scored positions; fixed windows
    and fixed masks, so every run sees the same batches (paired comparisons). `bf16`: the
    precision (bf16 | fp16 | fp32), or True / False for bf16 / fp32."""
    precision = bf16 if isinstance(bf16, str) else ("bf16" if bf16 else "fp32")
    was_training = model.training
    model.eval()
    model.set_depth(cfg.model.n_layers)
    rng = np.random.default_rng(0xE7A1)  # same masks for every run, so losses compare
    losses, counts = [], []
    for i in range(0, len(val_windows), cfg.eval.batch_size):
        x, y = model_inputs(cfg, val_windows[i : i + cfg.eval.batch_size], rng, data)
        with autocast(device, precision):
            loss = model(x.to(device), y.to(device))
        losses.append(float(loss.value))
        counts.append(loss.n_scored)
    model.train(was_training)
    return losses, counts


def evaluate(
    model: ProgressiveLM, cfg: Config, val_windows: torch.Tensor, data, device, bf16: bool | str
) -> float:
    """Full-depth held-out loss, weighted by scored positions; fixed windows and fixed masks."""
    total, count = 0.0, 0
    for value, n in zip(
        *evaluate_batches(model, cfg, val_windows, data, device, bf16), strict=True
    ):
        total += value * n
        count += n
    return total / count


# ---------------------------------------------------------------------------- one run
def _scored_positions(cfg: Config, targets: torch.Tensor) -> int:
    """Positions the head scores in `targets` (host tensor: counting needs no device sync)."""
    return int((targets != -100).sum()) if cfg.model.arch == "bert" else targets.numel()


def _scored_index(cfg: Config, targets: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """BERT: the flat positions of the scored tokens, found on the host (no device read)."""
    if cfg.model.arch != "bert":
        return None
    return _to_device((targets.reshape(-1) != -100).nonzero().squeeze(1), device)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device; on CUDA through pinned memory, so the copy does not wait for the GPU."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class _Run:
    """The live objects of one run and the steps of its loop; `st` is what a checkpoint keeps."""

    def __init__(
        self,
        cfg: Config,
        data: Any,  # a prepared progtune.data.TokenData
        report: Report | None,
        checkpoint_dir: Path | None,
        resume_from: str | Path | None,
    ) -> None:
        """Set up a fresh run, or one continued from the checkpoint in `resume_from`."""
        self.cfg, self.data, self.report, self.checkpoint_dir = cfg, data, report, checkpoint_dir
        self.ranks = Ranks.current()
        self.rows = self.ranks.share(cfg.budget.batch_size)  # this rank's rows of a micro-batch
        self.device, self.precision = set_up_process(cfg, self.ranks)
        if self.device.type == "cuda":  # a micro-batch that cannot fit is refused up front
            check_fits(cfg, data.vocab_size, self.ranks.world, precision=self.precision)
        self.plan = Plan.of(cfg)
        self.batches = TrainingWindows(data.train, cfg.model.seq_len, cfg.seed)
        self.val = val_windows(cfg, data.val)
        payload = load_checkpoint_of(cfg, resume_from) if resume_from else None
        torch.manual_seed(cfg.seed)  # model init and dropout draw from torch's generator
        k0 = payload["k"] if payload else cfg.stages.unique_layers[0]
        self.model = ProgressiveLM(
            cfg.model, data.vocab_size, k0, cfg.growth.operator, data.eos_id, data.pad_id
        ).to(self.device)
        self.opt = make_optimizer(self.model, cfg, self.device)
        self.scaler = grad_scaler(self.precision, self.device)
        # One draw per global micro-batch (or step): the same seed gives every rank the same depth.
        self.depth_rng = np.random.default_rng([cfg.seed, 0xDE97])
        self.st = RunState()
        if payload:
            self.st = restore_checkpoint(payload, self.model, self.opt, self.depth_rng, self.scaler)
        self.model.train()
        self.trained = self.prepare_trained_module()

    def prepare_trained_module(self) -> torch.nn.Module:
        """Compile the blocks (runtime.compile) and wrap in DDP (world > 1): what a micro-batch
        calls. Again after every growth: new blocks, new parameters."""
        if self.cfg.runtime.compile:
            compile_blocks(self.model.blocks)
        return wrap_model(self.model, self.ranks, self.device)

    # ------------------------------------------------------------------ training
    def grow_due_stages(self) -> None:
        """Enter every stage whose boundary step has passed (after that boundary's curve row)."""
        st = self.st
        while st.stage < bisect.bisect_right(self.plan.growth_steps, st.step):
            t0 = time.perf_counter()
            st.stage += 1
            self.opt = grow_with_optimizer(
                self.model, self.opt, self.cfg.stages.unique_layers[st.stage], self.cfg, self.device
            )
            self.trained = self.prepare_trained_module()
            st.wall_s += time.perf_counter() - t0

    def draw_micro_depth(self) -> int:
        """The executed depth of the next micro-batch (the depth sampler's one draw for it)."""
        cfg = self.cfg
        return draw_depth(self.depth_rng, len(self.model.blocks), cfg.model.n_layers, cfg.sampling)

    def step_depths(self) -> list[int]:
        """The depths of the step's micro-batches: one draw each, or one for all (sampling.per)."""
        accum = self.cfg.budget.grad_accum
        if self.cfg.sampling.per == "step":
            return [self.draw_micro_depth()] * accum
        return [self.draw_micro_depth() for _ in range(accum)]

    def optimizer_step(self) -> bool:
        """One optimizer step over `grad_accum` micro-batches; False (and no update) when a
        micro-batch loss was not finite. Losses reach the host once here, not per micro-batch."""
        cfg, st, plan, opt = self.cfg, self.st, self.plan, self.opt
        t0 = time.perf_counter()
        lr = lr_at(st.step, plan.total_steps, cfg.lr, plan.growth_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        if self.ranks.world > 1:  # dropout: other rows per rank; a function of the step (resume)
            seq = np.random.SeedSequence([cfg.seed, self.ranks.rank, st.step, 0xD809])
            torch.manual_seed(int(seq.generate_state(1)[0]))
        depths = self.step_depths()
        parts = [self.micro_step(d, i == len(depths) - 1) for i, d in enumerate(depths)]
        values = self.global_losses(parts)
        for value in values:  # summed in micro-batch order, as the curve always was
            st.loss_sum += value
        finite = all(math.isfinite(v) for v in values)
        if finite:
            self.apply_gradients()
        st.step += 1
        st.wall_s += time.perf_counter() - t0
        return finite

    def apply_gradients(self) -> None:
        """Clip (after unscaling fp16 gradients) and take the optimizer step."""
        opt, clip, scaler = self.opt, self.cfg.lr.grad_clip, self.scaler
        if scaler is not None:
            scaler.unscale_(opt)
        if clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()

    def global_losses(self, parts: list[torch.Tensor]) -> list[float]:
        """Each micro-batch's loss over the whole global micro-batch, read once per step; every
        rank gets the same values (so the finite check agrees)."""
        stacked = torch.stack(parts)
        if self.ranks.world > 1:
            stacked = all_reduce_sum(stacked, self.ranks)
        return stacked.tolist()

    def micro_step(self, depth: int, last: bool = True) -> torch.Tensor:
        """Forward and backward of this rank's share of the next global micro-batch at `depth`;
        its share of the micro-batch's mean loss, on the device (no host sync).

        Every rank builds the whole micro-batch (same windows, same masks) and trains its rows.
        The loss it backpropagates is its mean x its scored positions x world / all scored
        positions, so DDP's average of the gradients is the gradient of the global mean.
        """
        cfg, st, plan = self.cfg, self.st, self.plan
        batch_size, grad_accum = cfg.budget.batch_size, cfg.budget.grad_accum
        self.model.set_depth(depth)
        window = self.batches.take(st.samples, batch_size)
        st.samples += batch_size
        mlm_rng = np.random.default_rng([cfg.seed, st.micro_steps, 0x3A5C])
        x, y = model_inputs(cfg, window, mlm_rng, self.data)
        n_scored = _scored_positions(cfg, y)
        x, y = x[self.rows], y[self.rows]
        with sync_unless_last(self.trained, last):
            with autocast(self.device, self.precision):
                loss = self.trained(
                    _to_device(x, self.device),
                    _to_device(y, self.device),
                    _scored_index(cfg, y, self.device),
                )
            mean, world = loss.value, self.ranks.world
            mine = _scored_positions(cfg, y) / n_scored if world > 1 else 1.0  # share of positions
            if world > 1:
                mean = mean * (mine * world)
            scaled = mean / grad_accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        st.micro_steps += 1
        st.tokens += plan.tokens_per_micro
        st.flops += train_flops(
            cfg.model, self.data.vocab_size, depth, plan.tokens_per_micro, n_scored
        )
        st.depth_sum += depth
        st.micro_count += 1
        share = loss.value.detach()
        return share if world == 1 else share.double() * mine

    # ------------------------------------------------------------------ evaluation and reporting
    def evaluation_due(self, finite: bool) -> bool:
        """On the step grid, once cumulative FLOPs first pass a mark (ASHA's rungs, so a scheduler
        compares trials at the compute it decides at), and after a non-finite step."""
        st = self.st
        last_flops = st.curve[-1]["flops"] if st.curve else 0.0
        crossed = any(last_flops < mark <= st.flops for mark in self.cfg.eval.at_flops)
        return st.step in self.plan.eval_steps or crossed or not finite

    def evaluate_and_report(self) -> bool:
        """Append a curve row, checkpoint when due, report the row; True to stop the run (the
        report asked, or the evaluation loss is not finite)."""
        row = self.curve_row()
        written = self.checkpoint_if_due(row)
        asked = bool(self.report(dict(row), written)) if self.report else False
        stop = agreed(asked, self.ranks, self.device)  # rank 0 decides for all ranks
        return stop or not math.isfinite(row["eval_loss"])

    def curve_row(self) -> dict[str, Any]:
        """Evaluate, and close the curve row of the steps since the last one."""
        cfg, st, plan = self.cfg, self.st, self.plan
        t0 = time.perf_counter()
        # Every rank evaluates all windows: equal weights give the same loss on every rank with
        # no communication, the same as one process (the held-out set is small, ~3 % of a run).
        eval_loss = evaluate(self.model, cfg, self.val, self.data, self.device, self.precision)
        st.eval_wall_s += time.perf_counter() - t0
        row = {
            "step": st.step,
            "tokens": st.tokens,
            "flops": st.flops,
            "wall_s": st.wall_s,
            "stage": st.stage,
            "unique_layers": len(self.model.blocks),
            "mean_depth": st.depth_sum / st.micro_count if st.micro_count else None,
            "lr": lr_at(max(st.step - 1, 0), plan.total_steps, cfg.lr, plan.growth_steps),
            "train_loss": st.loss_sum / st.micro_count if st.micro_count else None,
            "eval_loss": eval_loss,
            "eval_wall_s": st.eval_wall_s,
            "checkpoint_wall_s": st.checkpoint_wall_s,
        }
        st.curve.append(row)
        st.depth_sum, st.micro_count, st.loss_sum = 0, 0, 0.0
        return row

    def checkpoint_if_due(self, row: dict[str, Any]) -> Path | None:
        """Checkpoint after a finite evaluation at the end and every `runtime.checkpoint_every`
        evaluations; the folder written, or None. Only rank 0 writes (all ranks hold the same)."""
        st, every = self.st, self.cfg.runtime.checkpoint_every
        evals_done = sum(1 for r in st.curve if r["step"] > 0)
        due = st.step == self.plan.total_steps or (every and evals_done % every == 0)
        writes = self.checkpoint_dir and self.ranks.is_main and st.step > 0
        if not (writes and math.isfinite(row["eval_loss"]) and due):
            return None
        t0 = time.perf_counter()
        st.depth_rng = self.depth_rng.bit_generator.state
        save_checkpoint(self.checkpoint_dir, self.model, self.opt, st, self.cfg, self.scaler)
        st.checkpoint_wall_s += time.perf_counter() - t0
        row["checkpoint_wall_s"] = st.checkpoint_wall_s
        return self.checkpoint_dir

    def result(self, status: str) -> TrainResult:
        """The run's summary and curve."""
        st = self.st
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
            device=str(self.device),
            threads=torch.get_num_threads(),
            data_fingerprint=self.data.fingerprint,
            precision=self.precision,
            workers=self.ranks.world,
        )


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
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    run = _Run(cfg, data, report, ckpt_dir, resume_from)
    st, total_steps = run.st, run.plan.total_steps
    status = "completed"
    if not st.curve and run.evaluate_and_report():  # a report may stop the run at its first row
        status = "stopped" if math.isfinite(st.curve[-1]["eval_loss"]) else "diverged"

    while st.step < total_steps and status == "completed":
        run.grow_due_stages()
        finite = run.optimizer_step()
        if not finite:
            status = "diverged"
        if run.evaluation_due(finite):
            stop = run.evaluate_and_report()
            if not math.isfinite(st.curve[-1]["eval_loss"]) or not finite:
                status = "diverged"
            elif stop and st.step < total_steps:  # at the last row it finished anyway
                status = "stopped"
    return run.result(status)
