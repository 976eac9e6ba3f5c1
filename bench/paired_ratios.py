"""Interleaved benchmark arms: the order of each repeat, one ratio per repeat, median and spread.

Shared by bench/workers_throughput.py, bench/compile_cpu.py and bench/trainer_overhead.py: on a
shared machine the load drifts, so two arms run alternately (ABBA: A B, B A, A B, ...) and each
repeat's pair gives one ratio; the median is the figure, min-max its spread.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


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
