"""Layer layouts and growth operators: which unique block runs where, and how blocks are copied."""

from __future__ import annotations

from collections.abc import Callable

# A layout maps (k unique blocks, d virtual positions) to the block index at each position.
Layout = Callable[[int, int], list[int]]


def interpolation(k: int, d: int) -> list[int]:
    """Apollo's layout: block floor(i * k / d) in integers (floats misround e.g. k=14, d=18)."""
    return [(i * k) // d for i in range(d)]


def stacking(k: int, d: int) -> list[int]:
    """StackBERT-style: 0..k-1 repeated; a partial last run takes the top blocks (3, 7 -> ..2,2)."""
    full_runs, rest = divmod(d, k)
    return list(range(k)) * full_runs + list(range(k - rest, k))


LAYOUTS: dict[str, Layout] = {"interpolation": interpolation, "stacking": stacking}


def layer_plan(operator: str, k: int, d: int) -> list[int]:
    """Which of the k unique blocks runs at each of the d positions of one pass."""
    if not 1 <= k <= d:
        raise ValueError(f"need 1 <= k <= d, got k={k}, d={d}")
    return LAYOUTS[operator](k, d)


def growth_map(operator: str, k_old: int, k_new: int) -> list[int]:
    """New block j copies old block map[j]: the same layout applied to (k_old -> k_new).

    With this map, a pass at depth k_new computes exactly the same function before and after growth.
    """
    return layer_plan(operator, k_old, k_new)
