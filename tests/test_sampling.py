"""Depth samplers against apollo.md section 3: distributions, bounds, determinism."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from progtune.config import SamplingConfig
from progtune.sampling import SAMPLERS, draw_depth, expected_depth

L = 12
DRAWS = 200_000


def _depths(strategy: str, k: int, n_layers: int = L, n: int = DRAWS, seed: int = 0, **kw):
    rng = np.random.default_rng(seed)
    s = SamplingConfig(strategy=strategy, **kw)
    return np.array([draw_depth(rng, k, n_layers, s) for _ in range(n)])


def _prob_tol(p: float, n: int, rounding: float) -> float:
    """5 binomial sigmas of a frequency from n draws, plus the rounding of the quoted value."""
    return 5 * math.sqrt(max(p * (1 - p), 1e-4) / n) + rounding


def _mean_tol(d: np.ndarray, rounding: float) -> float:
    """5 standard errors of a sample mean, plus the rounding of the quoted value."""
    return 5 * float(d.std()) / math.sqrt(len(d)) + rounding


# apollo.md section 3, L = 12: k -> (P(d = k), P(d = 12), E[d]); probabilities quoted to 3
# decimals (rounding 0.0005), means to 2 (rounding 0.005).
LVPS_TABLE = {1: (0.736, 0.002, 1.77), 3: (0.637, 0.016, 4.23), 6: (0.648, 0.067, 7.14)}


@pytest.mark.parametrize("k", sorted(LVPS_TABLE))
def test_lvps_matches_the_apollo_table(k: int) -> None:
    p_k, p_top, mean = LVPS_TABLE[k]
    d = _depths("lvps", k)
    assert abs(np.mean(d == k) - p_k) < _prob_tol(p_k, DRAWS, 0.0005)
    assert abs(np.mean(d == L) - p_top) < _prob_tol(p_top, DRAWS, 0.0005)
    assert abs(d.mean() - mean) < _mean_tol(d, 0.005)
    # Low values are prioritised: the frequency never rises with depth, bar the clipped top.
    counts = np.bincount(d, minlength=L + 1)[k:L]
    assert all(a >= b for a, b in itertools.pairwise(counts))


def test_lvps_k_equals_l_is_always_full_depth() -> None:
    d = _depths("lvps", L, n=1000)
    assert (d == L).all()  # table row k = 12: P(d = 12) = 1, E[d] = 12


def test_lvps_exact_probabilities_from_the_definition() -> None:
    # 1/y ~ U[1/(r + 0.4), 1/0.6]: P(d = k) = P(y < (k + 1) / k) in closed form.
    k = 3
    r = L / k
    lo, hi = 1 / (r + 0.4), 1 / 0.6
    p_k = (hi - k / (k + 1)) / (hi - lo)
    p_top = (1 / r - lo) / (hi - lo)
    d = _depths("lvps", k)
    assert abs(np.mean(d == k) - p_k) < _prob_tol(p_k, DRAWS, 0)
    assert abs(np.mean(d == L) - p_top) < _prob_tol(p_top, DRAWS, 0)


def test_lvps_offsets_are_parameters() -> None:
    # lvps_high = 0: y reaches r only at u = 0 exactly, so the full depth is (almost) never drawn.
    d = _depths("lvps", 1, n=20_000, lvps_high=0.0)
    assert (d < L).all()
    # A larger low offset makes shallow draws rarer.
    base = _depths("lvps", 3, n=20_000)
    shifted = _depths("lvps", 3, n=20_000, lvps_low=0.9)
    assert shifted.mean() > base.mean() + 0.5


@pytest.mark.parametrize(("k", "mean"), [(1, 6.5), (3, 7.5), (6, 9.0)])
def test_uniform_mean_and_flat_histogram(k: int, mean: float) -> None:
    d = _depths("uniform", k)
    assert abs(d.mean() - mean) < _mean_tol(d, 0)
    n_values = L - k + 1
    freq = np.bincount(d, minlength=L + 1)[k:] / DRAWS
    assert len(freq) == n_values
    assert np.abs(freq - 1 / n_values).max() < _prob_tol(1 / n_values, DRAWS, 0)


# apollo.md: edge ("sigmoid"): k=1: P(d=1) ~ 0.40, P(d=12) ~ 0.33; k=6: ~0.46 and ~0.44.
# Quoted to 2 decimals: rounding 0.005.
@pytest.mark.parametrize(("k", "p_k", "p_top"), [(1, 0.40, 0.33), (6, 0.46, 0.44)])
def test_edge_piles_mass_at_both_ends(k: int, p_k: float, p_top: float) -> None:
    d = _depths("edge", k)
    assert abs(np.mean(d == k) - p_k) < _prob_tol(p_k, DRAWS, 0.005)
    assert abs(np.mean(d == L) - p_top) < _prob_tol(p_top, DRAWS, 0.005)


@pytest.mark.parametrize("k", [1, 3, 6, 12])
def test_full_and_none(k: int) -> None:
    assert set(_depths("full", k, n=500)) == {L}
    assert set(_depths("none", k, n=500)) == {k}


# (k, L) pairs from the smallest model to beyond the reference 12 layers; k = L included.
PAIRS = [(1, 1), (1, 2), (2, 2), (1, 4), (2, 4), (3, 4), (1, 12), (3, 12), (5, 12), (6, 12),
         (11, 12), (12, 12), (1, 48), (7, 48), (47, 48), (3, 7), (2, 3)]  # fmt: skip


@pytest.mark.parametrize("strategy", sorted(SAMPLERS))
def test_every_sampler_stays_within_k_and_l(strategy: str) -> None:
    """The shared test every registered depth sampler must pass."""
    settings = [
        SamplingConfig(strategy=strategy),
        SamplingConfig(strategy=strategy, lvps_low=0.05, lvps_high=5.0, edge_slope=200.0),
        SamplingConfig(strategy=strategy, lvps_low=3.0, lvps_high=0.0, edge_slope=0.1),
    ]
    for s in settings:
        for k, n_layers in PAIRS:
            rng = np.random.default_rng([k, n_layers])
            via_draw = [draw_depth(rng, k, n_layers, s) for _ in range(400)]
            direct = [SAMPLERS[strategy](rng, k, n_layers, s) for _ in range(400)]
            for depths in (via_draw, direct):
                assert all(type(d) is int for d in depths), (strategy, k, n_layers)
                assert all(k <= d <= n_layers for d in depths), (strategy, k, n_layers, s)


@pytest.mark.parametrize("strategy", sorted(SAMPLERS))
def test_same_seed_same_sequence(strategy: str) -> None:
    a = _depths(strategy, 3, n=2000, seed=42)
    b = _depths(strategy, 3, n=2000, seed=42)
    assert (a == b).all()
    if strategy in ("lvps", "uniform", "edge"):  # random samplers: another seed, another draw
        assert (a != _depths(strategy, 3, n=2000, seed=43)).any()


def test_samplers_never_touch_the_global_rng() -> None:
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    for strategy in SAMPLERS:
        _depths(strategy, 2, n=100)
    assert (np.random.get_state()[1] == before).all()


def test_expected_depth_is_deterministic_and_close() -> None:
    s = SamplingConfig(strategy="lvps")
    assert expected_depth(3, L, s) == expected_depth(3, L, s)
    # 20k draws, sd(d) ~ 2.17: 5 standard errors = 0.077, plus the table's rounding 0.005.
    assert abs(expected_depth(3, L, s) - 4.23) < 0.082
    assert expected_depth(3, L, SamplingConfig(strategy="none")) == 3.0
    assert expected_depth(12, L, s) == 12.0
