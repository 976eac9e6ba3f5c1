"""The measured phases of bench/gpu_throughput.py, each within the time limit, and their lines.

Full depth eager, per executed depth (k = 1 model), full depth with each block compiled; a
SIGALRM backstop (TimeUp) cuts a phase that overruns. torch loads inside the functions.
"""

from __future__ import annotations

import argparse
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from throughput_steps import graph_stats, make_step, measure, summarize, synthetic_batches

from progtune.errors import ProgtuneError


class TimeUp(BaseException):
    """Raised by the SIGALRM backstop when a phase overruns the time limit.

    A BaseException, like KeyboardInterrupt: the compiler's broad `except Exception` fallbacks
    (cache bypasses) would otherwise swallow it and compilation would run on past the limit.
    """


@dataclass
class Bench:
    """What every phase needs, and the JSON payload the phases fill in."""

    args: argparse.Namespace
    cfg: Any  # the resolved progtune config
    device: Any  # torch.device
    bf16: bool
    tokens: int  # per step: budget.batch_size x model.seq_len
    fpt: float  # FLOPs per token at full depth (forward + backward)
    peak: float | None  # peak FLOP/s for MFU
    deadline: float  # perf_counter time the phases plan to end by (the backstop fires later)
    sync: Callable[[], None]
    out: dict[str, Any]  # the JSON payload
    cuts: list[str]  # what the time limit shortened, in words

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500]


def install_backstop() -> None:
    """SIGALRM raises TimeUp (where the platform has SIGALRM); set_alarm arms it."""
    if hasattr(signal, "SIGALRM"):

        def _alarm(_sig, _frame):
            raise TimeUp

        signal.signal(signal.SIGALRM, _alarm)


def set_alarm(seconds: float) -> None:
    """SIGALRM backstop in `seconds`, then every second until cancelled (0 cancels)."""
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, max(0.0, seconds), 1.0 if seconds > 0 else 0.0)


def steps_text(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def fmt_figures(r: dict, memory: int | None = None) -> str:
    mfu = f"MFU {r['mfu']:.1%}" if r["mfu"] is not None else "MFU n/a"
    mem = f", peak memory {memory / 2**30:.2f} GiB" if memory is not None else ""
    return (
        f"{steps_text(r['steps'])}, {r['step_s'] * 1e3:.2f} ms/step (median "
        f"{r['step_s_median'] * 1e3:.2f}), {r['tokens_per_s']:,.0f} tokens/s, "
        f"{r['achieved_flops_per_s'] / 1e12:.3f} TFLOP/s, {mfu}{mem}"
    )


def note_cut(cuts: list, label: str, warm: list, times: list, args, warmup: int = -1) -> None:
    """Record a measurement that the time limit shortened."""
    warmup = args.warmup if warmup < 0 else warmup
    if len(times) < args.steps or len(warm) < warmup:
        cuts.append(
            f"{label}: {len(times)} of {args.steps} timed steps, {len(warm)} of {warmup} "
            "warm-up (time limit)"
        )


def depth_table(rows: dict[int, dict], n_layers: int) -> list[dict]:
    """Rows by depth with time share = step(d) / step(L); printed as they are finished."""
    ref = rows.get(n_layers)
    table = []
    for d in sorted(rows):
        r = rows[d]
        if ref is not None:
            r["time_share"] = r["step_s"] / ref["step_s"]
            r["time_over_flops_share"] = r["time_share"] / r["flops_share"]
        table.append(r)
        shares = (
            f"time share {r['time_share']:.3f}, FLOPs share {r['flops_share']:.3f}, "
            f"time/FLOPs share {r['time_over_flops_share']:.3f}"
            if ref is not None
            else f"FLOPs share {r['flops_share']:.3f}"
        )
        print(f"depth {d:>2}: {r['step_s'] * 1e3:.2f} ms/step ({steps_text(r['steps'])}), {shares}")
    return table


def eager_phase(b: Bench) -> tuple[Any, list, Callable[[], None], dict]:
    """1. Full depth, eager (k = L unique blocks): (model, batches, step, figures)."""
    import torch

    from progtune.model import ProgressiveLM
    from progtune.train import make_optimizer

    cfg, args, m = b.cfg, b.args, b.cfg.model
    vocab, n_layers, tokens, fpt = cfg.data.vocab_size, m.n_layers, b.tokens, b.fpt
    torch.manual_seed(cfg.seed)
    model = ProgressiveLM(m, vocab, n_layers, cfg.growth.operator, 0, 1).to(b.device)
    params = sum(p.numel() for p in model.parameters())
    b.out["model"]["params"] = params
    print(
        f"preset {args.preset}: {m.arch} {n_layers} x {m.d_model} ({m.n_heads} heads), seq "
        f"{m.seq_len}, vocab {vocab}, {params / 1e6:.2f} M params"
    )
    peak, peak_note = b.peak, b.out["peak_source"]
    print(
        f"batch {cfg.budget.batch_size} x {m.seq_len} = {tokens:,} tokens/step (budget."
        f"grad_accum={cfg.budget.grad_accum} ignored); {fpt:.4g} FLOPs/token, "
        f"{fpt * tokens:.4g} FLOPs/step; peak "
        f"{f'{peak / 1e12:g} TFLOP/s ({peak_note})' if peak else peak_note}"
    )
    batches = synthetic_batches(cfg, b.device)
    opt = make_optimizer(model, cfg, b.device)
    # May use a third of the time when more phases follow.
    pending = 2 if args.no_compile else 3
    now = time.perf_counter()
    step = make_step(model, opt, batches, n_layers, b.bf16, b.device, cfg.lr.grad_clip)
    if b.cuda:
        torch.cuda.reset_peak_memory_stats(b.device)
    try:
        warm, times = measure(
            step, args.warmup, args.steps, now + (b.deadline - now) / pending, b.sync
        )
    except torch.OutOfMemoryError as exc:
        raise ProgtuneError(
            f"out of GPU memory at {tokens:,} tokens per step ({one_line(exc)[:120]}); "
            "pass a smaller budget.batch_size=N"
        ) from None
    eager = summarize(warm, times, tokens, fpt * tokens, peak)
    b.out["eager"] = eager
    note_cut(b.cuts, "eager", warm, times, args)
    if b.cuda:
        b.out["peak_memory_bytes"] = torch.cuda.max_memory_allocated(b.device)
    print(f"full depth, eager: {fmt_figures(eager, b.out['peak_memory_bytes'])}")
    return model, batches, step, eager


def depth_phase(b: Bench, batches: list, eager: dict, rows: dict[int, dict]) -> None:
    """3. Per executed depth on a k = 1 model, d = L first as the reference; fills `rows`."""
    import torch

    from progtune.model import ProgressiveLM, flops_per_token
    from progtune.train import make_optimizer

    cfg, args, m = b.cfg, b.args, b.cfg.model
    vocab, n_layers = cfg.data.vocab_size, m.n_layers
    torch.manual_seed(cfg.seed)
    dmodel = ProgressiveLM(m, vocab, 1, cfg.growth.operator, 0, 1).to(b.device)
    dopt = make_optimizer(dmodel, cfg, b.device)
    pending = 2 if args.no_compile else 3
    now = time.perf_counter()
    phase_end = now + (b.deadline - now) / (pending - 1)
    order = [n_layers, *range(1, n_layers)]
    shares = {d: flops_per_token(m, vocab, d) / b.fpt for d in order}
    for i, d in enumerate(order):
        now, share = time.perf_counter(), shares[d]
        if now + (args.warmup + 1) * eager["step_s"] * share > phase_end:
            b.cuts.append(f"depths {', '.join(map(str, sorted(order[i:])))}: not measured")
            break
        # The phase's time left is split by expected step cost, so depths get equal steps.
        slice_s = (phase_end - now) * share / sum(shares[e] for e in order[i:])
        dstep = make_step(dmodel, dopt, batches, d, b.bf16, b.device, cfg.lr.grad_clip)
        warm, times = measure(dstep, args.warmup, args.steps, now + slice_s, b.sync)
        note_cut(b.cuts, f"depth {d}", warm, times, args)
        rows[d] = {"depth": d, "flops_share": share} | summarize(
            warm, times, b.tokens, flops_per_token(m, vocab, d) * b.tokens, b.peak
        )
    del dmodel, dopt
    b.out["depths"] = depth_table(rows, n_layers)


def compiled_phase(b: Bench, model: Any, step: Callable[[], None], eager: dict) -> None:
    """2. Full depth with each transformer block compiled on its own (the layer list changes
    every micro-batch, so not the whole model); a compiler error is recorded, not raised."""
    args = b.args
    if args.no_compile:
        b.out["compiled"] = {"skipped": "--no-compile"}
        print("full depth, compiled per block: skipped (--no-compile)")
        return
    if time.perf_counter() + 2 * (args.warmup + 1) * eager["step_s"] + 5 > b.deadline:
        b.out["compiled"] = {"skipped": "time limit"}
        b.cuts.append("compiled: not run (time limit)")
        print("full depth, compiled per block: skipped (time limit)")
        return
    import torch

    if b.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(b.device)
    try:
        for block in model.blocks:
            block.compile()  # in place: the module objects (and the layer plan) stay
        warm, times = measure(step, max(1, args.warmup), args.steps, b.deadline, b.sync)
        comp = summarize(warm, times, b.tokens, b.fpt * b.tokens, b.peak)
        comp["first_step_s"] = warm[0]  # includes compiling forward and backward
        comp["peak_memory_bytes"] = torch.cuda.max_memory_allocated(b.device) if b.cuda else None
        comp["speedup_vs_eager"] = eager["step_s"] / comp["step_s"]
        comp["dynamo"] = graph_stats()
        note_cut(b.cuts, "compiled", warm, times, args, max(1, args.warmup))
        print(
            f"full depth, compiled per block: {fmt_figures(comp, comp['peak_memory_bytes'])}, "
            f"first step {comp['first_step_s']:.1f} s, x{comp['speedup_vs_eager']:.3f} "
            "vs eager"
        )
    except Exception as exc:  # any compiler failure is recorded, the run goes on
        comp = {"error": one_line(exc)}
        print(f"full depth, compiled per block: failed ({comp['error']})")
    b.out["compiled"] = comp
