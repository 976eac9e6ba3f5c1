"""The `apollo` space as shipped until session 7 (progtune 0.2.0 before the landscape cut it):
five depth samplers, both growth operators, three optimizer-state policies, LR 1/3-3x the
preset's, warmup 1-20 %, re-warmup 0 / 2 / 5 %; starting points growth without sampling and the
Apollo recipe (LVPS), both at the preset's LR. Kept for replays (the before of the comparison).
"""

from __future__ import annotations

from typing import Any

from progtune.config import Config
from progtune.search_spaces.methods import method
from progtune.spaces import unique_layer_schedules

STARTS = ("interpolation", "apollo")


def define(trial: Any, base: Config) -> dict[str, Any]:
    pinned = getattr(trial, "pinned", lambda name: None)
    pinned_boundaries = pinned("stages.boundaries")
    schedules = unique_layer_schedules(base.model.n_layers)
    if pinned_boundaries is not None:  # only schedules with a matching number of stages
        schedules = {k: v for k, v in schedules.items() if len(v) == len(pinned_boundaries) + 1}
    choice = trial.suggest_categorical("stages.unique_layers", sorted(schedules))
    unique_layers = schedules[choice] if isinstance(choice, str) else tuple(choice)  # or pinned
    # Boundaries: the first in [0.05, 0.5], each next one a share of what is left, so they
    # are strictly increasing in (0, 1) by construction.
    boundaries: list[float] = list(pinned_boundaries or [])
    position = 0.0
    for i in range(len(unique_layers) - 1 if pinned_boundaries is None else 0):
        if i == 0:
            position = trial.suggest_float("space.first_boundary", 0.05, 0.5)
        else:
            share = trial.suggest_float(f"space.boundary_share_{i}", 0.1, 0.7)
            position = position + (1.0 - position) * share
        boundaries.append(round(min(position, 0.95), 4))

    strategy = trial.suggest_categorical(
        "sampling.strategy", ["lvps", "uniform", "edge", "full", "none"]
    )
    out: dict[str, Any] = {
        "stages.unique_layers": list(unique_layers),
        "stages.boundaries": boundaries,
        "sampling.strategy": strategy,
    }
    if strategy in ("lvps", "edge"):
        out["sampling.lvps_low"] = trial.suggest_float("sampling.lvps_low", 0.4, 0.9)
        out["sampling.lvps_high"] = trial.suggest_float("sampling.lvps_high", 0.1, 1.0)
    if strategy == "edge":
        out["sampling.edge_slope"] = trial.suggest_float("sampling.edge_slope", 5.0, 40.0)

    out["growth.operator"] = trial.suggest_categorical(
        "growth.operator", ["interpolation", "stacking"]
    )
    out["growth.optimizer_state"] = trial.suggest_categorical(
        "growth.optimizer_state", ["keep", "reset", "copy"]
    )
    peak = base.lr.peak
    out["lr.peak"] = trial.suggest_float("lr.peak", peak / 3, peak * 3, log=True)
    out["lr.warmup_fraction"] = trial.suggest_float("lr.warmup_fraction", 0.01, 0.2)
    out["lr.schedule"] = trial.suggest_categorical("lr.schedule", ["cosine", "linear"])
    out["lr.rewarmup_fraction"] = trial.suggest_categorical(
        "lr.rewarmup_fraction", [0.0, 0.02, 0.05]
    )
    return out


def starts(base: Config, pinned: dict[str, Any]) -> list[dict[str, Any]]:
    """Optuna parameters of this space for the STARTS methods at the preset's LR and warmup."""
    if base.model.n_layers == 1 or {"stages.boundaries", "stages.unique_layers"} & set(pinned):
        return []  # no growth to start from, or the user chose the schedule
    out = []
    for name in STARTS:
        m = method(name, base)
        unique_layers, boundaries = m["stages.unique_layers"], m["stages.boundaries"]
        key = "-".join(map(str, unique_layers))
        if key not in unique_layer_schedules(base.model.n_layers):
            return []
        params: dict[str, Any] = {"stages.unique_layers": key}
        for i, b in enumerate(boundaries):  # back to define()'s first boundary and shares
            if i == 0:
                params["space.first_boundary"] = b
            else:
                params[f"space.boundary_share_{i}"] = (b - boundaries[i - 1]) / (
                    1 - boundaries[i - 1]
                )
        params |= {
            "sampling.strategy": m["sampling.strategy"],
            "growth.operator": m["growth.operator"],
            "growth.optimizer_state": "keep",
            "lr.peak": base.lr.peak,
            "lr.warmup_fraction": base.lr.warmup_fraction,
            "lr.schedule": "cosine",
            "lr.rewarmup_fraction": 0.0,
        }
        if m["sampling.strategy"] == "lvps":
            params["sampling.lvps_low"] = base.sampling.lvps_low
            params["sampling.lvps_high"] = base.sampling.lvps_high
        out.append(params)
    return out
