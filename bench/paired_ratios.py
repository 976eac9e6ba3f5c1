"""Interleaved benchmark arms: the order of each repeat, one ratio per repeat, median and spread.

Shared by bench/workers_throughput.py, bench/compile_cpu.py and bench/trainer_overhead.py: on a
shared machine the load drifts, so two arms run alternately (ABBA: A B, B A, A B, ...) and each
repeat's pair gives one ratio; the median is the figure, min-max its spread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn


def arm_order(repeat: int, arms: tuple[str, str]) -> tuple[str, str]:
    """The two arms in the order repeat `repeat` (0-based) runs them: ABBA, so a steady drift in
    the machine's load favours neither arm."""
    return arms if repeat % 2 == 0 else (arms[1], arms[0])


def ratio_summary(numerators: Sequence[float], denominators: Sequence[float]) -> dict:
    """Per-repeat ratios numerator / denominator, their median, min and max."""
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True)]
    if not ratios:
        raise ValueError("no repeats to compare")
    return {
        "ratios": ratios,
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
    }


def ratio_line(name: str, summary: dict) -> str:
    """`name: 0.987 (median of 3 repeats, spread 0.970-1.010; each 0.987 0.970 1.010)`."""
    each = " ".join(f"{r:.3f}" for r in summary["ratios"])
    return (
        f"{name}: {summary['median']:.3f} (median of {len(summary['ratios'])} repeats, spread "
        f"{summary['min']:.3f}-{summary['max']:.3f}; each {each})"
    )


def rate_line(name: str, rates: Sequence[float], unit: str = "tokens/s") -> str:
    """`name: median 12,345 tokens/s (min-max 12,000-12,500)`."""
    return (
        f"{name}: median {statistics.median(rates):,.0f} {unit} "
        f"(min-max {min(rates):,.0f}-{max(rates):,.0f})"
    )


def fail(prog: str, message: str) -> NoReturn:
    """A bench script's one-line error, exit 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def arms_parser(prog: str, doc: str, *own: tuple[str, dict[str, Any]]) -> argparse.ArgumentParser:
    """The paired-arm scripts' command line: --preset, --tokens, --repeats, their `own` options,
    --json and KEY=VALUE overrides."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--tokens", type=int, help="budget.tokens of every run (the preset's)")
    parser.add_argument("--repeats", type=int, default=3)
    for flag, kwargs in own:
        parser.add_argument(flag, **kwargs)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    return parser


def arms_config(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> Any:
    """The preset with `defaults`, then the KEY=VALUE overrides, then --tokens."""
    from progtune.config import parse_assignments, resolve

    overrides = {**(defaults or {}), **parse_assignments(args.overrides)}
    if args.tokens:
        overrides["budget.tokens"] = args.tokens
    return resolve(args.preset, overrides=overrides)
