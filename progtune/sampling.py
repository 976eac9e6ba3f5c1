"""Depth samplers: the executed depth d (k <= d <= L) of a global micro-batch (apollo.md 3)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from progtune.config import SamplingConfig

# A sampler maps (generator, k unique blocks, L target layers, settings) to a depth in [k, L].
DepthSampler = Callable[[np.random.Generator, int, int, SamplingConfig], int]


def _floor_depth(k: int, n_layers: int, y: float) -> int:
    """d = floor(k * y) with y clipped to [1, L / k]; the clip keeps d inside [k, L]."""
    if y >= n_layers / k:  # explicit: k * (L / k) can round to just below L in floats
        return n_layers
    return max(math.floor(k * y), k)


def lvps(rng: np.random.Generator, k: int, n_layers: int, s: SamplingConfig) -> int:
    """Low-Value-Prioritized Sampling: 1/y uniform on [1/(r + high), 1/low]; shallow d first."""
    r = n_layers / k
    lo, hi = 1.0 / (r + s.lvps_high), 1.0 / s.lvps_low
    inv_y = lo + rng.random() * (hi - lo)
    return _floor_depth(k, n_layers, 1.0 / inv_y)


def uniform(rng: np.random.Generator, k: int, n_layers: int, s: SamplingConfig) -> int:
    """d uniform over the integers {k, ..., L}."""
    return int(rng.integers(k, n_layers + 1))


def edge(rng: np.random.Generator, k: int, n_layers: int, s: SamplingConfig) -> int:
    """'sigmoid' in the reference code: a steep logistic in u from r + high down to low."""
    r = n_layers / k
    u = rng.random()
    falling = 1.0 - 1.0 / (1.0 + math.exp(-s.edge_slope * (u - 0.5)))
    y = s.lvps_low + (r + s.lvps_high - s.lvps_low) * falling
    return _floor_depth(k, n_layers, y)


def full(rng: np.random.Generator, k: int, n_layers: int, s: SamplingConfig) -> int:
    """Always the full target depth L (tied weights)."""
    return n_layers


def none(rng: np.random.Generator, k: int, n_layers: int, s: SamplingConfig) -> int:
    """Always d = k: plain progressive growth without lessons."""
    return k


SAMPLERS: dict[str, DepthSampler] = {
    "lvps": lvps,
    "uniform": uniform,
    "edge": edge,
    "full": full,
    "none": none,
}


def draw_depth(rng: np.random.Generator, k: int, n_layers: int, s: SamplingConfig) -> int:
    """One depth draw; the stage with all L blocks always runs at full depth."""
    if k >= n_layers:
        return n_layers
    return SAMPLERS[s.strategy](rng, k, n_layers, s)


def expected_depth(k: int, n_layers: int, s: SamplingConfig, draws: int = 20_000) -> float:
    """Monte-Carlo mean depth (for estimates such as --dry-run); seeded, so deterministic."""
    rng = np.random.default_rng(12345)
    return float(np.mean([draw_depth(rng, k, n_layers, s) for _ in range(draws)]))
