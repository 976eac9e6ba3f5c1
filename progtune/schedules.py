"""Learning-rate schedules as pure functions of the optimizer step."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from progtune.config import LRConfig

# A decay maps progress p in [0, 1] after warmup to a multiplier in [min_ratio, 1].
Decay = Callable[[float, float], float]


def cosine(p: float, min_ratio: float) -> float:
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


def linear(p: float, min_ratio: float) -> float:
    return min_ratio + (1.0 - min_ratio) * (1.0 - p)


def constant(p: float, min_ratio: float) -> float:
    return 1.0


DECAYS: dict[str, Decay] = {"cosine": cosine, "linear": linear, "constant": constant}


def lr_at(step: int, total_steps: int, cfg: LRConfig, growth_steps: Sequence[int] = ()) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`.

    One global schedule for the whole run (the reference never resets it at growth): linear warmup
    over `warmup_fraction` of the steps, then the decay family down to `min_ratio * peak`. With
    `rewarmup_fraction > 0` the rate is also ramped up linearly again after each growth step.
    """
    warmup = round(cfg.warmup_fraction * total_steps)
    if step < warmup:
        factor = (step + 1) / warmup
    else:
        span = max(total_steps - warmup, 1)
        p = min(max((step - warmup) / span, 0.0), 1.0)
        factor = DECAYS[cfg.schedule](p, cfg.min_ratio)
    rewarmup = round(cfg.rewarmup_fraction * total_steps)
    if rewarmup > 0:
        since = [step - g for g in growth_steps if 0 <= step - g < rewarmup]
        if since:
            factor *= (min(since) + 1) / rewarmup
    return cfg.peak * factor
