"""Learning-rate schedules: warmup, decay endpoints, and re-warmup after growth."""

from __future__ import annotations

import itertools
import math

import pytest

from progtune.config import LRConfig
from progtune.schedules import DECAYS, lr_at

PEAK = 3e-3
TOTAL = 200
WARMUP = 20  # warmup_fraction 0.1 of 200 steps


def cfg(**kw: object) -> LRConfig:
    return LRConfig(**{"peak": PEAK, "warmup_fraction": 0.1, **kw})


@pytest.mark.parametrize("schedule", sorted(DECAYS))
def test_linear_warmup_to_the_peak(schedule: str) -> None:
    c = cfg(schedule=schedule, min_ratio=0.1)
    assert lr_at(0, TOTAL, c) == pytest.approx(PEAK / WARMUP, rel=1e-12)
    for step in range(WARMUP):
        assert lr_at(step, TOTAL, c) == pytest.approx(PEAK * (step + 1) / WARMUP, rel=1e-12)
    assert lr_at(WARMUP - 1, TOTAL, c) == PEAK  # end of warmup: exactly the peak
    assert lr_at(WARMUP, TOTAL, c) == PEAK  # decay starts from the peak (p = 0)


def test_cosine_endpoints_and_midpoint() -> None:
    for min_ratio in (0.0, 0.1):
        c = cfg(min_ratio=min_ratio)
        span = TOTAL - WARMUP
        assert lr_at(WARMUP + span // 2, TOTAL, c) == pytest.approx(
            PEAK * (min_ratio + (1 - min_ratio) * 0.5), rel=1e-12
        )
        assert lr_at(TOTAL, TOTAL, c) == pytest.approx(min_ratio * PEAK, abs=1e-18)
        # The last step sits one step before p = 1: within (1 - m) (pi / span)^2 / 4 of the floor.
        gap = (1 - min_ratio) * PEAK * (math.pi / span) ** 2 / 4
        last = lr_at(TOTAL - 1, TOTAL, c)
        assert min_ratio * PEAK <= last <= min_ratio * PEAK + gap * 1.001
        lrs = [lr_at(s, TOTAL, c) for s in range(WARMUP, TOTAL)]
        assert all(a > b for a, b in itertools.pairwise(lrs))  # strictly decaying


def test_linear_decay() -> None:
    c = cfg(schedule="linear", min_ratio=0.2)
    span = TOTAL - WARMUP
    for step in (WARMUP, WARMUP + 45, WARMUP + 90, TOTAL - 1, TOTAL):
        p = (step - WARMUP) / span
        assert lr_at(step, TOTAL, c) == pytest.approx(PEAK * (0.2 + 0.8 * (1 - p)), rel=1e-12)
    assert lr_at(WARMUP + 90, TOTAL, c) == pytest.approx(PEAK * 0.6, rel=1e-12)  # midpoint


def test_constant_after_warmup_ignores_min_ratio() -> None:
    c = cfg(schedule="constant", min_ratio=0.5)
    assert {lr_at(s, TOTAL, c) for s in range(WARMUP, TOTAL + 1)} == {PEAK}


def test_no_warmup_starts_at_the_peak() -> None:
    assert lr_at(0, TOTAL, cfg(warmup_fraction=0.0)) == PEAK


def test_growth_never_resets_the_schedule_without_rewarmup() -> None:
    c = cfg()
    for step in range(TOTAL):
        assert lr_at(step, TOTAL, c, growth_steps=[10, 50, 120]) == lr_at(step, TOTAL, c)


def test_rewarmup_ramps_again_after_each_growth() -> None:
    c = cfg(rewarmup_fraction=0.05)  # 10 steps
    growth = [50, 120]

    def base(step: int) -> float:
        return lr_at(step, TOTAL, cfg())

    for g in growth:
        assert lr_at(g - 1, TOTAL, c, growth) == base(g - 1)  # before growth: untouched
        for i in range(10):
            expected = base(g + i) * (i + 1) / 10
            assert lr_at(g + i, TOTAL, c, growth) == pytest.approx(expected, rel=1e-12)
        assert lr_at(g + 10, TOTAL, c, growth) == base(g + 10)  # ramp over
    # A growth inside the warmup multiplies both ramps.
    early = lr_at(12, TOTAL, c, [10])
    assert early == pytest.approx(PEAK * 13 / WARMUP * 3 / 10, rel=1e-12)
