"""Data parallel on CPU: tokens/s of N gloo workers x 1 thread vs 1 process x N threads, one run.

    python bench/workers_throughput.py [--preset cpu-small] [--tokens N] [--repeats 3]
        [--workers 2] [--one-threads N] [--json PATH] [KEY=VALUE ...]

Both arms train the same config - the preset's stages and depth sampling, `model.dropout=0`
unless overridden - with the same global batch (budget.batch_size x budget.grad_accum):
- `one`: progtune.train.train in this process, runtime.threads = N (or --one-threads);
- `workers`: progtune.local_workers.run_local_workers with N gloo processes of runtime.threads = 1,
  each computing its share of every global micro-batch.
The arms alternate ABBA over --repeats (bench/paired_ratios.py). Printed, with the median and
spread (min-max) of the per-repeat ratios workers / one:
- tokens/s on each run's own training clock (total_tokens / total_wall_s: no evaluation,
  checkpoint or process start-up), and end to end (the call's wall time: the workers' start-up,
  data shipping and evaluations included);
- the largest |eval_loss| and |train_loss| difference between the two curves at the same step,
  the largest relative FLOPs difference, and whether steps, tokens and mean depths agree. With
  dropout 0 both arms compute the same sums in a different order (the gradient is averaged over
  ranks), so the curves differ by floating-point rounding only - amplified over the run by
  training's chaos, and larger in bf16 autocast than in fp32 (`runtime.precision=fp32`).
Bad input (unknown preset or knob, N < 2, a batch the workers cannot split) is one line, exit 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_ratios import (
    arm_order,
    arms_config,
    arms_parser,
    fail,
    rate_line,
    ratio_line,
    ratio_summary,
)

from progtune.errors import ProgtuneError

PROG = "workers_throughput"
ARMS = ("one", "workers")
SAME_COLUMNS = ("step", "tokens", "mean_depth", "unique_layers", "stage")


def arm_configs(cfg, workers: int, one_threads: int | None = None) -> dict[str, Any]:
    """The config of each arm: same maths, different threads (the runtime section only)."""
    from progtune.config import with_overrides

    return {
        "one": with_overrides(cfg, {"runtime.threads": one_threads or workers}),
        "workers": with_overrides(cfg, {"runtime.threads": 1}),
    }


def run_arm(arm: str, cfg, workers: int, data) -> dict[str, Any]:
    """One run of an arm: its tokens/s (training clock and end to end) and its curve."""
    from progtune.local_workers import run_local_workers
    from progtune.train import train

    start = time.perf_counter()
    result = (
        run_local_workers(cfg, workers, data=data) if arm == "workers" else train(cfg, data=data)
    )
    wall = time.perf_counter() - start
    if result.status != "completed":
        raise ProgtuneError(f"the {arm} arm ended {result.status}; lower lr.peak or the budget")
    return {
        "tokens_per_s": result.total_tokens / result.total_wall_s,
        "end_to_end_tokens_per_s": result.total_tokens / wall,
        "threads": result.threads,
        "ranks": result.workers,
        "precision": result.precision,
        "curve": result.curve,
    }


def compare_curves(a: list[dict], b: list[dict]) -> dict[str, Any]:
    """How far two curves of the same config are apart, row by row."""

    def largest(key: str, rel: bool = False) -> float:
        diffs = []
        for x, y in zip(a, b, strict=True):
            if x[key] is None or y[key] is None:
                continue
            diff = abs(x[key] - y[key])
            diffs.append(diff / max(abs(x[key]), 1e-300) if rel else diff)
        return max(diffs, default=0.0)

    same = len(a) == len(b) and all(
        x[key] == y[key] for x, y in zip(a, b, strict=True) for key in SAME_COLUMNS
    )
    return {
        "rows": len(a),
        "same_steps_tokens_depths": same,
        "max_eval_loss_diff": largest("eval_loss") if same else None,
        "max_train_loss_diff": largest("train_loss") if same else None,
        "max_flops_rel_diff": largest("flops", rel=True) if same else None,
    }


def measure(cfg, data, workers: int, repeats: int, one_threads: int | None = None) -> dict:
    """Both arms, interleaved over `repeats`; rates, ratios and the curve comparison."""
    configs = arm_configs(cfg, workers, one_threads)
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for repeat in range(repeats):
        for arm in arm_order(repeat, ARMS):
            runs[arm].append(run_arm(arm, configs[arm], workers, data))
            last = runs[arm][-1]
            print(
                f"  repeat {repeat + 1} {arm}: {last['tokens_per_s']:,.0f} tokens/s training "
                f"clock, {last['end_to_end_tokens_per_s']:,.0f} end to end",
                flush=True,
            )
    comparisons = [
        compare_curves(o["curve"], w["curve"])
        for o, w in zip(runs["one"], runs["workers"], strict=True)
    ]

    def rates(arm: str, key: str) -> list[float]:
        return [r[key] for r in runs[arm]]

    def worst(key: str) -> float | None:
        values = [c[key] for c in comparisons]
        return None if None in values else max(values)

    return {
        "precision": runs["one"][0]["precision"],
        "threads": {arm: runs[arm][0]["threads"] for arm in ARMS},
        "ranks": {arm: runs[arm][0]["ranks"] for arm in ARMS},
        "tokens_per_s": {arm: rates(arm, "tokens_per_s") for arm in ARMS},
        "end_to_end_tokens_per_s": {arm: rates(arm, "end_to_end_tokens_per_s") for arm in ARMS},
        "ratio": ratio_summary(rates("workers", "tokens_per_s"), rates("one", "tokens_per_s")),
        "ratio_end_to_end": ratio_summary(
            rates("workers", "end_to_end_tokens_per_s"), rates("one", "end_to_end_tokens_per_s")
        ),
        "rows": comparisons[0]["rows"],
        "same_steps_tokens_depths": all(c["same_steps_tokens_depths"] for c in comparisons),
        "max_eval_loss_diff": worst("max_eval_loss_diff"),
        "max_train_loss_diff": worst("max_train_loss_diff"),
        "max_flops_rel_diff": worst("max_flops_rel_diff"),
        "final_eval_loss": {arm: runs[arm][0]["curve"][-1]["eval_loss"] for arm in ARMS},
    }


def print_figures(r: dict[str, Any], workers: int) -> None:
    for arm in ARMS:
        print(
            rate_line(
                f"{arm} ({r['threads'][arm]} thread(s)), training clock", r["tokens_per_s"][arm]
            )
        )
    print(ratio_line(f"ratio {workers} workers / 1 process, training clock", r["ratio"]))
    print(ratio_line("ratio, end to end", r["ratio_end_to_end"]))
    print(
        f"curves ({r['rows']} rows): steps, tokens and depths "
        f"{'agree' if r['same_steps_tokens_depths'] else 'DIFFER'}"
    )
    if r["same_steps_tokens_depths"]:
        print(
            f"max |eval_loss difference| {r['max_eval_loss_diff']:.3g}, max |train_loss "
            f"difference| {r['max_train_loss_diff']:.3g}, max FLOPs relative difference "
            f"{r['max_flops_rel_diff']:.3g} (final eval_loss one "
            f"{r['final_eval_loss']['one']:.4f}, workers {r['final_eval_loss']['workers']:.4f})"
        )


def main(argv: list[str] | None = None) -> None:
    parser = arms_parser(
        PROG,
        __doc__,
        ("--workers", {"type": int, "default": 2, "help": "N (>= 2)"}),
        ("--one-threads", {"type": int, "help": "threads of the one process (N)"}),
    )
    args = parser.parse_intermixed_args(argv)
    bad_threads = args.one_threads is not None and args.one_threads < 1
    if args.workers < 2 or args.repeats < 1 or bad_threads:
        fail(PROG, "--workers must be >= 2, --repeats and --one-threads >= 1")
    try:
        cfg = arms_config(args, {"model.dropout": 0.0})
        from progtune.data import prepare_data

        data = prepare_data(cfg.data)
        m, b = cfg.model, cfg.budget
        print(
            f"preset {args.preset}: {m.arch} {m.n_layers} x {m.d_model}, seq {m.seq_len}, global "
            f"batch {b.batch_size} x {b.grad_accum}, {b.tokens:,} tokens, dropout {m.dropout}, "
            f"sampling {cfg.sampling.strategy}",
            flush=True,
        )
        result = measure(cfg, data, args.workers, args.repeats, args.one_threads)
    except ProgtuneError as err:
        fail(PROG, str(err))
    print(f"precision {result['precision']}")
    print_figures(result, args.workers)
    if args.json:
        figures = {"preset": args.preset, "workers": args.workers, "tokens": b.tokens, **result}
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
