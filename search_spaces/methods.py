"""methods: how do the classic alternatives compare, at the preset's learning rate and budget?

Fixed points, not a search: training from scratch, stacking growth without depth sampling
(StackBERT-style), interpolation growth without depth sampling, and the reference Apollo recipe
(LVPS depth sampling + interpolation growth). Growing runs double the unique blocks up to
model.n_layers at the short-run reference boundaries (10 / 20 / 50 % for four stages).

Budget: one trial per method (4); `--num-samples 12` runs each method on three seeds.
"""

from __future__ import annotations

from typing import Any

from progtune.config import Config, scratch_overrides
from progtune.spaces import unique_layer_schedules

METHODS = ("scratch", "stacking", "interpolation", "apollo")


def _growth(base: Config) -> dict[str, Any]:
    n_layers = base.model.n_layers
    doubling = next(iter(unique_layer_schedules(n_layers).values())) if n_layers > 1 else ()
    reference = {2: [0.5], 3: [0.2, 0.5], 4: [0.1, 0.2, 0.5]}
    stages = len(doubling)
    boundaries = reference.get(stages, [round((i + 1) / stages, 4) for i in range(stages - 1)])
    return {"stages.unique_layers": list(doubling), "stages.boundaries": boundaries}


def method(name: str, base: Config) -> dict[str, Any]:
    """The overrides of one named method."""
    if name == "scratch" or base.model.n_layers == 1:
        return scratch_overrides(base.model.n_layers)
    growth = _growth(base)
    if name == "stacking":
        return {**growth, "sampling.strategy": "none", "growth.operator": "stacking"}
    if name == "interpolation":
        return {**growth, "sampling.strategy": "none", "growth.operator": "interpolation"}
    return {**growth, "sampling.strategy": "lvps", "growth.operator": "interpolation"}


def points(base: Config) -> list[dict[str, Any]]:
    return [method(name, base) for name in METHODS]


def define(trial: Any, base: Config) -> dict[str, Any]:
    return method(trial.suggest_categorical("method", list(METHODS)), base)
