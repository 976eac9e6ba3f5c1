"""Timing primitives of bench/gpu_throughput.py: synthetic batches, one training step, timed steps.

torch is imported inside the functions: the script checks its arguments before loading it.
"""

from __future__ import annotations

import itertools
import statistics
import time

MASK_ID = 2  # synthetic BERT inputs: progtune's tokenizers put <mask> third


def synthetic_batches(cfg, device, count: int = 4) -> list:
    """`count` seeded (inputs, targets) batches on the device; BERT: masked-LM targets."""
    import torch

    m, b = cfg.model, cfg.budget
    gen = torch.Generator().manual_seed(cfg.seed)
    out = []
    for _ in range(count):
        window = torch.randint(0, cfg.data.vocab_size, (b.batch_size, m.seq_len + 1), generator=gen)
        if m.arch == "bert":
            x = window[:, :-1]
            scored = torch.rand(x.shape, generator=gen) < m.mask_fraction
            scored[:, 0] |= ~scored.any(dim=-1)  # at least one scored position per row
            y = torch.where(scored, x, -100)
            x = torch.where(scored, MASK_ID, x)
        else:
            x, y = window[:, :-1], window[:, 1:]
        out.append((x.contiguous().to(device), y.contiguous().to(device)))
    return out


def make_step(model, opt, batches, depth: int, bf16: bool, device, grad_clip: float):
    """One training micro-batch step as progtune.train runs it, at executed depth `depth`."""
    import torch

    cycle = itertools.cycle(batches)

    def step() -> None:
        x, y = next(cycle)
        model.set_depth(depth)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, y)
        loss.value.backward()
        loss.value.item()  # the training loop reads every micro-batch loss (a host sync)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()

    return step


def measure(step, warmup: int, steps: int, deadline: float, sync) -> tuple[list, list]:
    """(warm-up times, timed times) in seconds; stops early when the next step would pass
    `deadline` (at least one timed step always runs)."""

    def timed() -> float:
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        return time.perf_counter() - t0

    warm: list[float] = []
    for _ in range(warmup):
        if warm and time.perf_counter() + warm[-1] > deadline:
            break
        warm.append(timed())
    times: list[float] = []
    for _ in range(steps):
        if times and time.perf_counter() + statistics.fmean(times) > deadline:
            break
        times.append(timed())
    return warm, times


def summarize(warm: list, times: list, tokens: int, flops: float, peak: float | None) -> dict:
    step_s = statistics.fmean(times)
    achieved = flops / step_s
    return {
        "warmup_steps": len(warm),
        "steps": len(times),
        "step_s": step_s,
        "step_s_median": statistics.median(times),
        "tokens_per_s": tokens / step_s,
        "achieved_flops_per_s": achieved,
        "mfu": achieved / peak if peak else None,
    }


def graph_stats() -> dict | None:
    """Dynamo's graph / graph-break / recompile counts (private counters; None if they moved)."""
    try:
        from torch._dynamo.utils import counters

        return {
            "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "recompiles": int(sum(counters["recompiles"].values())),
        }
    except Exception:
        return None
