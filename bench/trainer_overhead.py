"""Engine overhead: tokens/s of progtune's loop vs a plain loop, and step time per executed depth.

    python bench/trainer_overhead.py [--preset NAME] [--repeats N] [--steps N] [--with-run]
        [--json PATH] [KEY=VALUE ...]

1. Full depth: the engine (`progtune.train.train`, scratch config, no evaluation or checkpoint in
   the timed part) against a plain loop of the same transformers model (HF forward with labels,
   AdamW, same batches, same precision and threads) measured in the same process, interleaved
   (ABBA, bench/paired_ratios.py). Prints `ratio: X` = best engine tokens/s / best plain tokens/s
   over N repeats (goal >= 0.97), and the per-repeat ratios' median and spread, on the wall
   clock and in tokens per CPU second of this process (less disturbed by other jobs sharing the
   machine's cores; only meaningful with runtime.threads=1).
2. Per depth: step time (forward + backward + AdamW) of the engine's model at executed depth d,
   divided by the full-depth step time, against the FLOPs share of that depth. Prints
   `depth d: time share / FLOPs share = Y` (goal <= 1.15).
3. Per stage of a real progressive run (the preset's stages, no depth sampling, so stage s runs
   at depth k_s): the engine's own training clock per FLOP in each stage over the same in the
   full-depth stage - everything inside a step counts here (data loading, depth draw, growth,
   head and embeddings). Prints `stage s (depth k): time per FLOP / full depth = Z` (goal <= 1.15).
4. With --with-run: the share of one whole preset run's wall time spent in evaluation and
   checkpoints at the preset's settings (the search's trials run exactly this).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_ratios import arm_order, ratio_line, ratio_summary


def plain_loop(cfg, data, steps: int) -> tuple[float, float]:
    """Tokens/s of the textbook loop (HF model(input_ids, labels=...) with AdamW), and tokens
    per CPU second of this process (less sensitive to other jobs on a shared machine)."""
    from progtune.model import build_hf_model
    from progtune.train import _Batches, use_bf16

    torch.manual_seed(cfg.seed)
    model = build_hf_model(cfg.model, data.vocab_size, eos_id=data.eos_id, pad_id=data.pad_id)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr.peak, fused=True)
    batches = _Batches(data.train, cfg.model.seq_len, cfg.seed)
    bf16 = use_bf16(cfg, torch.device("cpu"))
    bs = cfg.budget.batch_size
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(steps):
        window = batches.take(step * bs, bs)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=window[:, :-1], labels=window[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.lr.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    tokens = steps * bs * cfg.model.seq_len
    return tokens / (time.perf_counter() - start), tokens / (time.process_time() - cpu_start)


def engine(cfg, data, steps: int) -> tuple[float, float, float]:
    """Tokens/s of progtune.train on its own training clock, its total wall share, and tokens
    per CPU second between its first and last report (the steps plus one 1-window evaluation)."""
    from progtune.config import with_overrides
    from progtune.train import train

    n_layers = cfg.model.n_layers
    tokens = steps * cfg.budget.batch_size * cfg.model.seq_len
    run = with_overrides(
        cfg,
        {
            "stages.unique_layers": [n_layers],
            "stages.boundaries": [],
            "sampling.strategy": "full",
            "budget.tokens": tokens,
            "eval.points": 1,
            "eval.max_tokens": cfg.model.seq_len,
        },
    )
    cpu_at_rows: list[float] = []
    start = time.perf_counter()
    result = train(run, lambda row, written: cpu_at_rows.append(time.process_time()), data=data)
    total = time.perf_counter() - start
    cpu_rate = result.total_tokens / (cpu_at_rows[-1] - cpu_at_rows[0])
    return result.total_tokens / result.total_wall_s, result.total_wall_s / total, cpu_rate


def depth_times(cfg, data, steps: int) -> dict[int, float]:
    """Seconds per step at each executed depth (k = 1 unique block, shared)."""
    from progtune.model import ProgressiveLM
    from progtune.train import _Batches, make_optimizer, use_bf16

    torch.manual_seed(cfg.seed)
    model = ProgressiveLM(cfg.model, data.vocab_size, 1, "interpolation", data.eos_id)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    batches = _Batches(data.train, cfg.model.seq_len, cfg.seed)
    bf16 = use_bf16(cfg, torch.device("cpu"))
    bs = cfg.budget.batch_size
    out = {}
    for d in range(1, cfg.model.n_layers + 1):
        model.set_depth(d)
        times = []
        for step in range(steps + 2):
            window = batches.take(step * bs, bs)
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(window[:, :-1], window[:, 1:])
            loss.value.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss.value.item()
            times.append(time.perf_counter() - t0)
        out[d] = float(np.median(times[2:]))  # two warm-up steps dropped
    return out


def stage_costs(cfg, data, steps: int) -> list[tuple[int, int, float]]:
    """(stage, depth, seconds per FLOP / full-depth stage's) from a progressive engine run."""
    from progtune.config import with_overrides
    from progtune.train import train

    run = with_overrides(
        cfg,
        {
            "sampling.strategy": "none",
            "budget.tokens": steps * cfg.budget.batch_size * cfg.model.seq_len,
            "eval.points": 1,
            "eval.max_tokens": cfg.model.seq_len,
        },
    )
    curve = train(run, data=data).curve
    # With one evaluation point the rows are step 0, each growth boundary and the end: one
    # segment per stage, labelled by its closing row; the training clock excludes evaluations.
    costs = [
        (b["stage"], b["unique_layers"], (b["wall_s"] - a["wall_s"]) / (b["flops"] - a["flops"]))
        for a, b in pairwise(curve)
    ]
    return [(s, d, c / costs[-1][2]) for s, d, c in costs]


def full_depth(cfg, data, repeats: int, steps: int) -> dict:
    """Engine vs plain loop at full depth, interleaved: rates, best-of ratio, per-repeat ratios."""
    plain_loop(cfg, data, 5)  # warm-up: allocator, kernels
    rates: dict[str, list[float]] = {"plain": [], "engine": []}
    cpu_rates: dict[str, list[float]] = {"plain": [], "engine": []}
    shares = []
    for repeat in range(repeats):  # interleaved so machine noise hits both alike
        for arm in arm_order(repeat, ("plain", "engine")):
            if arm == "plain":
                rate, cpu_rate = plain_loop(cfg, data, steps)
            else:
                rate, share, cpu_rate = engine(cfg, data, steps)
                shares.append(share)
            rates[arm].append(rate)
            cpu_rates[arm].append(cpu_rate)
    return {
        "engine_tokens_per_s": rates["engine"],
        "plain_tokens_per_s": rates["plain"],
        "engine_tokens_per_cpu_s": cpu_rates["engine"],
        "plain_tokens_per_cpu_s": cpu_rates["plain"],
        "engine_train_share_of_call": shares,
        "ratio_best": max(rates["engine"]) / max(rates["plain"]),
        "ratio": ratio_summary(rates["engine"], rates["plain"]),
        "ratio_cpu_time": ratio_summary(cpu_rates["engine"], cpu_rates["plain"]),
    }


def print_depths(cfg, data, steps: int) -> list[dict]:
    """Part 2: step time share / FLOPs share per executed depth, printed and returned."""
    from progtune.model import flops_per_token

    m = cfg.model
    times = depth_times(cfg, data, steps)
    full_time, full_flops = times[m.n_layers], flops_per_token(m, data.vocab_size, m.n_layers)
    rows = []
    for d, t in times.items():
        flops_share = flops_per_token(m, data.vocab_size, d) / full_flops
        rows.append(
            {"depth": d, "step_s": t, "time_share": t / full_time, "flops_share": flops_share}
        )
        print(
            f"depth {d}: {t * 1000:.1f} ms/step, time share {t / full_time:.3f}, FLOPs share "
            f"{flops_share:.3f}, time share / FLOPs share = {t / full_time / flops_share:.3f}"
        )
    return rows


def print_preset_run(cfg, data) -> None:
    """Part 4: evaluation and checkpoint shares of one whole preset run."""
    import tempfile

    from progtune.train import train

    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, data=data, checkpoint_dir=f"{tmp}/checkpoint")
    total = result.total_wall_s + result.eval_wall_s + result.checkpoint_wall_s
    print(
        f"preset run: train {result.total_wall_s:.1f}s, eval {result.eval_wall_s:.1f}s "
        f"({result.eval_wall_s / total:.1%}), checkpoints {result.checkpoint_wall_s:.1f}s "
        f"({result.checkpoint_wall_s / total:.1%})"
    )


def main() -> None:
    from progtune.config import parse_assignments, resolve
    from progtune.data import prepare_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--with-run", action="store_true", help="also time one whole preset run")
    parser.add_argument("--json", type=Path, help="also write parts 1-3's figures here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    cfg = resolve(args.preset, overrides=parse_assignments(args.overrides))
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    data = prepare_data(cfg.data)
    m = cfg.model
    print(
        f"preset {args.preset}: {m.arch} {m.n_layers}x{m.d_model}, seq {m.seq_len}, "
        f"batch {cfg.budget.batch_size}, threads {torch.get_num_threads()}"
    )

    full = full_depth(cfg, data, args.repeats, args.steps)
    print(
        f"full depth: engine {max(full['engine_tokens_per_s']):,.0f} tokens/s, plain loop "
        f"{max(full['plain_tokens_per_s']):,.0f} tokens/s (best of {args.repeats})"
    )
    print(f"ratio: {full['ratio_best']:.3f}")
    print(ratio_line("engine / plain per repeat", full["ratio"]))
    print(ratio_line("engine / plain per repeat, tokens per CPU second", full["ratio_cpu_time"]))
    depths = print_depths(cfg, data, max(args.steps // 2, 5))
    stages = stage_costs(cfg, data, max(args.steps * 3, 30))
    for stage, depth, ratio in stages:
        print(f"stage {stage} (depth {depth}): time per FLOP / full depth = {ratio:.3f}")
    if args.json:
        stage_rows = [{"stage": s, "depth": d, "time_per_flop_ratio": r} for s, d, r in stages]
        figures = {"preset": args.preset, **full, "depths": depths, "stages": stage_rows}
        args.json.write_text(json.dumps(figures, indent=1))
    if args.with_run:
        print_preset_run(cfg, data)


if __name__ == "__main__":
    main()
