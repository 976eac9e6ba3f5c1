"""runtime.compile on CPU: the engine's steady tokens/s with each block compiled vs eager, one run.

    python bench/compile_cpu.py [--preset cpu-small] [--tokens N] [--repeats 3] [--segments 5]
        [--json PATH] [KEY=VALUE ...]

Both arms are progtune.train.train on the preset's model shape from scratch (all blocks, full
depth, no checkpoints), one with runtime.compile=false and one with runtime.compile=true
(torch.compile of each block), alternating ABBA over --repeats (bench/paired_ratios.py). Each
run evaluates --segments times (one held-out window, outside the training clock), which splits
its training clock into segments:
- steady tokens/s: segments 2.. only (warm-up and compilation happen in the first);
- warm-up excess: the first segment's time minus its tokens at the steady rate. With compile on,
  that is the compilation (plus the eager arm's own warm-up excess, printed beside it);
- steady tokens per CPU second of this process between the first and the last evaluation (the
  one-window evaluations included): less disturbed by other jobs on a shared machine.
Printed: steady tokens/s of each arm (median, min-max), the per-repeat ratios compile / eager
(median and spread), and the warm-up excess of each repeat. Dynamo is reset before every run;
the inductor cache is a fresh temporary folder per script run unless TORCHINDUCTOR_CACHE_DIR is
set, so the first compile is cold and later repeats hit the on-disk cache (both are printed).
Bad input (unknown preset or knob, --segments < 2) is one line, exit 2.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
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

PROG = "compile_cpu"
ARMS = ("eager", "compile")


def arm_config(cfg, compile_blocks: bool, segments: int):
    """The preset's model from scratch at full depth, evaluated `segments` times on one window."""
    from progtune.config import scratch_overrides, with_overrides

    return with_overrides(
        cfg,
        {
            **scratch_overrides(cfg.model.n_layers),
            "eval.points": segments,
            "eval.max_tokens": cfg.model.seq_len,
            "runtime.checkpoint_every": 0,
            "runtime.compile": compile_blocks,
        },
    )


def segment_figures(curve: list[dict]) -> dict[str, float]:
    """Steady tokens/s (segments 2..) and the first segment's excess seconds over that rate."""
    rows = [r for r in curve if r["step"] > 0]
    if len(rows) < 2:
        raise ProgtuneError("the run has fewer than 2 evaluation segments; raise --tokens")
    first, last = rows[0], rows[-1]
    steady = (last["tokens"] - first["tokens"]) / (last["wall_s"] - first["wall_s"])
    return {
        "steady_tokens_per_s": steady,
        "warmup_excess_s": first["wall_s"] - first["tokens"] / steady,
        "first_segment_s": first["wall_s"],
    }


def run_arm(cfg, data) -> dict[str, Any]:
    """One run: its segment figures, steady tokens per CPU second and the call's wall time."""
    import torch

    from progtune.train import train

    torch.compiler.reset()  # every run compiles its blocks again (the on-disk cache may hit)
    cpu_at: list[tuple[int, float]] = []  # (tokens, process CPU seconds) at each evaluation

    def note(row: dict, written: Any) -> None:
        cpu_at.append((row["tokens"], time.process_time()))

    start = time.perf_counter()
    result = train(cfg, note, data=data)
    wall = time.perf_counter() - start
    if result.status != "completed":
        raise ProgtuneError(f"a run ended {result.status}; lower lr.peak or the budget")
    (tokens_1, cpu_1), (tokens_n, cpu_n) = cpu_at[1], cpu_at[-1]  # [0] is step 0
    return {
        **segment_figures(result.curve),
        "steady_tokens_per_cpu_s": (tokens_n - tokens_1) / (cpu_n - cpu_1),
        "wall_s": wall,
        "precision": result.precision,
    }


def measure(cfg, data, repeats: int, segments: int) -> dict[str, Any]:
    """Both arms, interleaved over `repeats`: steady rates, their ratios, warm-up excesses."""
    configs = {arm: arm_config(cfg, arm == "compile", segments) for arm in ARMS}
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for repeat in range(repeats):
        for arm in arm_order(repeat, ARMS):
            runs[arm].append(run_arm(configs[arm], data))
            last = runs[arm][-1]
            print(
                f"  repeat {repeat + 1} {arm}: steady {last['steady_tokens_per_s']:,.0f} "
                f"tokens/s, warm-up excess {last['warmup_excess_s']:.1f} s, run "
                f"{last['wall_s']:.1f} s",
                flush=True,
            )

    def values(arm: str, key: str) -> list[float]:
        return [r[key] for r in runs[arm]]

    return {
        "precision": runs["eager"][0]["precision"],
        "steady_tokens_per_s": {arm: values(arm, "steady_tokens_per_s") for arm in ARMS},
        "warmup_excess_s": {arm: values(arm, "warmup_excess_s") for arm in ARMS},
        "run_wall_s": {arm: values(arm, "wall_s") for arm in ARMS},
        "ratio": ratio_summary(
            values("compile", "steady_tokens_per_s"), values("eager", "steady_tokens_per_s")
        ),
        "steady_tokens_per_cpu_s": {arm: values(arm, "steady_tokens_per_cpu_s") for arm in ARMS},
        "ratio_cpu_time": ratio_summary(
            values("compile", "steady_tokens_per_cpu_s"),
            values("eager", "steady_tokens_per_cpu_s"),
        ),
    }


def print_figures(r: dict[str, Any]) -> None:
    for arm in ARMS:
        print(rate_line(f"{arm}, steady", r["steady_tokens_per_s"][arm]))
    print(ratio_line("ratio compile / eager, steady tokens/s", r["ratio"]))
    print(ratio_line("ratio compile / eager, steady tokens per CPU second", r["ratio_cpu_time"]))
    for arm in ARMS:
        excess = " ".join(f"{s:.1f}" for s in r["warmup_excess_s"][arm])
        print(f"{arm}: warm-up excess of the first segment, s (repeat 1 = cold cache): {excess}")


def main(argv: list[str] | None = None) -> None:
    segments = ("--segments", {"type": int, "default": 5, "help": "evaluations per run (>= 2)"})
    parser = arms_parser(PROG, __doc__, segments)
    args = parser.parse_intermixed_args(argv)
    if args.segments < 2 or args.repeats < 1:
        fail(PROG, "--segments must be >= 2 and --repeats >= 1")
    with tempfile.TemporaryDirectory(prefix="compile-cpu-") as tmp:
        own_cache = "TORCHINDUCTOR_CACHE_DIR" not in os.environ
        if own_cache:  # set before torch is imported; removed with the folder
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = tmp
        try:
            from progtune.data import prepare_data

            cfg = arms_config(args)
            arm_config(cfg, True, args.segments)  # an unknown knob is refused before any run
            data = prepare_data(cfg.data)
            m = cfg.model
            print(
                f"preset {args.preset}: {m.arch} {m.n_layers} x {m.d_model}, seq {m.seq_len}, "
                f"batch {cfg.budget.batch_size}, {cfg.budget.tokens:,} tokens, "
                f"{args.segments} segments, threads {cfg.runtime.threads or 'default'}",
                flush=True,
            )
            result = measure(cfg, data, args.repeats, args.segments)
        except ProgtuneError as err:
            fail(PROG, str(err))
        finally:
            if own_cache:
                del os.environ["TORCHINDUCTOR_CACHE_DIR"]
    print(f"precision {result['precision']}")
    print_figures(result)
    if args.json:
        figures = {"preset": args.preset, "tokens": cfg.budget.tokens, **result}
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
