"""apollo: which progressive schedule reaches the target loss for the least compute?

Searches the Apollo knobs around the preset: the unique-layer schedule (doubling, Apollo-like
thirds, halving, single jump; candidates derived from model.n_layers), the stage boundaries, the
depth sampler (none or LVPS, with LVPS's constants), and the learning rate (peak around 1.4x the
preset's, warmup around the preset's, schedule family, re-warmup after growth). Conditional knobs
(LVPS constants, boundaries per stage) are only proposed where they apply.

Shaped by the recorded landscape (docs/benchmarks.md 6c, `bench/landscape_knobs.py`: ~80
configurations x 2 seeds on Python source and on English prose, cpu-small's model at a quarter of
its batch): uniform, edge and full-depth sampling never reached the target on source (a few did
on prose) while no sampling was the best level on both, so the sampler is none | lvps; the growth
operator made little difference and keeping the Adam moments at growth was best on both corpora,
so both are the preset's (interpolation, keep; set another with KEY=VALUE, e.g.
growth.operator=stacking); 2.5 % warmup and half the preset's LR never reached the target, so
the warmup range is 0.5-2.5x the preset's and the LR range 0.7-2.8x (centred on 1.4x: 1-1.41x
was best on source, 1.41-2x on prose).

Starting points (tried first, then TPE): the landscape's best configuration (doubling schedule,
first growth at 50 %, then at 60 % of what is left - 1-2-4 @ 0.5, 0.8 at 4 layers -, no depth
sampling, 1.41x the preset's LR, linear decay, 5 % re-warmup) and growth without depth sampling
at the short-run reference boundaries with the preset's LR (the best classic point). Measured at
cpu-small's 4 layers only: at other depths and scales they are informed guesses.

Budget: TPE needs roughly 10 random start-up trials before it models the space; 8-16 trials give
a first ranking on a laptop, 50-100 a reliable one on a GPU cluster.
"""

from __future__ import annotations

from typing import Any

from progtune.config import Config
from progtune.search_spaces.methods import method
from progtune.spaces import unique_layer_schedules

SAMPLERS = ["none", "lvps"]
LR_RANGE = (0.7, 2.8)  # x the preset's peak, log-uniform
WARMUP_RANGE = (0.5, 2.5)  # x the preset's warmup fraction
BEST_LR = 1.41  # x the preset's peak: the landscape's best on both corpora
BEST_FIRST, BEST_SHARE = 0.5, 0.6  # its first boundary, then each a share of what is left


def _schedules(trial: Any, base: Config) -> tuple[tuple[int, ...], list[float]]:
    """The unique-layer schedule and its boundaries (pinned ones respected)."""
    pinned = getattr(trial, "pinned", lambda name: None)
    pinned_boundaries = pinned("stages.boundaries")
    schedules = unique_layer_schedules(base.model.n_layers)
    if pinned_boundaries is not None:  # only schedules with a matching number of stages
        schedules = {k: v for k, v in schedules.items() if len(v) == len(pinned_boundaries) + 1}
    choice = trial.suggest_categorical("stages.unique_layers", sorted(schedules))
    unique_layers = schedules[choice] if isinstance(choice, str) else tuple(choice)  # or pinned
    # The first boundary in [0.1, 0.5], each next one a share of what is left, so they are
    # strictly increasing in (0, 1) by construction.
    boundaries: list[float] = list(pinned_boundaries or [])
    position = 0.0
    for i in range(len(unique_layers) - 1 if pinned_boundaries is None else 0):
        if i == 0:
            position = trial.suggest_float("space.first_boundary", 0.1, 0.5)
        else:
            share = trial.suggest_float(f"space.boundary_share_{i}", 0.1, 0.7)
            position = position + (1.0 - position) * share
        boundaries.append(round(min(position, 0.95), 4))
    return unique_layers, boundaries


def define(trial: Any, base: Config) -> dict[str, Any]:
    unique_layers, boundaries = _schedules(trial, base)
    strategy = trial.suggest_categorical("sampling.strategy", SAMPLERS)
    out: dict[str, Any] = {
        "stages.unique_layers": list(unique_layers),
        "stages.boundaries": boundaries,
        "sampling.strategy": strategy,
    }
    if strategy == "lvps":
        out["sampling.lvps_low"] = trial.suggest_float("sampling.lvps_low", 0.4, 0.9)
        out["sampling.lvps_high"] = trial.suggest_float("sampling.lvps_high", 0.1, 1.0)
    peak, warmup = base.lr.peak, base.lr.warmup_fraction
    out["lr.peak"] = trial.suggest_float(
        "lr.peak", peak * LR_RANGE[0], peak * LR_RANGE[1], log=True
    )
    out["lr.warmup_fraction"] = trial.suggest_float(
        "lr.warmup_fraction", warmup * WARMUP_RANGE[0], min(0.5, warmup * WARMUP_RANGE[1])
    )
    out["lr.schedule"] = trial.suggest_categorical("lr.schedule", ["cosine", "linear"])
    out["lr.rewarmup_fraction"] = trial.suggest_categorical("lr.rewarmup_fraction", [0.0, 0.05])
    return out


def _boundary_params(boundaries: list[float]) -> dict[str, float]:
    """Boundaries back to define()'s first boundary and shares."""
    params: dict[str, float] = {}
    for i, b in enumerate(boundaries):
        if i == 0:
            params["space.first_boundary"] = b
        else:
            params[f"space.boundary_share_{i}"] = (b - boundaries[i - 1]) / (1 - boundaries[i - 1])
    return params


def _best(base: Config, key: str, stages: int) -> dict[str, Any]:
    """The landscape's best configuration on the doubling schedule `key`."""
    params: dict[str, Any] = {"stages.unique_layers": key, "space.first_boundary": BEST_FIRST}
    for i in range(1, stages - 1):
        params[f"space.boundary_share_{i}"] = BEST_SHARE
    return params | {
        "sampling.strategy": "none",
        "lr.peak": base.lr.peak * BEST_LR,
        "lr.warmup_fraction": base.lr.warmup_fraction,
        "lr.schedule": "linear",
        "lr.rewarmup_fraction": 0.05,
    }


def _classic(base: Config, key: str, boundaries: list[float]) -> dict[str, Any]:
    """Growth without depth sampling at the reference boundaries, the preset's LR."""
    return {
        "stages.unique_layers": key,
        **_boundary_params(boundaries),
        "sampling.strategy": "none",
        "lr.peak": base.lr.peak,
        "lr.warmup_fraction": base.lr.warmup_fraction,
        "lr.schedule": "cosine",
        "lr.rewarmup_fraction": 0.0,
    }


def starts(base: Config, pinned: dict[str, Any]) -> list[dict[str, Any]]:
    """Optuna parameters of this space for its two starting points (see the module doc)."""
    if base.model.n_layers == 1 or {"stages.boundaries", "stages.unique_layers"} & set(pinned):
        return []  # no growth to start from, or the user chose the schedule
    growth = method("interpolation", base)
    unique_layers, boundaries = growth["stages.unique_layers"], growth["stages.boundaries"]
    key = "-".join(map(str, unique_layers))
    if key not in unique_layer_schedules(base.model.n_layers):
        return []
    return [_best(base, key, len(unique_layers)), _classic(base, key, boundaries)]
