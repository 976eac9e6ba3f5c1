"""The discretised apollo space a landscape is recorded over, its scales, and the run plan.

search_spaces/apollo.py searches floats and 6 categorical knobs; a recorded landscape needs a
finite grid so that a replayed proposal can be snapped to a recorded point. The grid keeps every
knob the apollo space searches except the sampler constants (LVPS/edge keep the preset's), with
3-5 levels each; the plan is scratch at several LRs, the space's classic starting points, then a
seeded random sample of the grid (the full product, ~29 k points, is far beyond a CPU budget).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import dataclass
from typing import Any

from progtune.config import Config, flatten, resolve, with_overrides
from progtune.spaces import unique_layer_schedules

# Levels of the grid. LRs are multiples of the preset's lr.peak, so a scale keeps its own LR.
LR_FACTORS = (0.5, 0.71, 1.0, 1.41, 2.0)
SCRATCH_LR_FACTORS = (0.25, 0.5, 0.71, 1.0, 1.41, 2.0)
FIRST_BOUNDARIES = (0.1, 0.2, 0.35, 0.5)
LATER_SHARES = (0.3, 0.6)  # of what is left after the previous boundary, as apollo.define does
STRATEGIES = ("none", "lvps", "uniform", "edge", "full")
OPERATORS = ("interpolation", "stacking")
OPTIMIZER_STATES = ("keep", "reset", "copy")
WARMUPS = (0.025, 0.1, 0.2)
LR_SCHEDULES = ("cosine", "linear")
REWARMUPS = (0.0, 0.05)

# Named scales: (product preset, overrides). `cheap` is cpu-small at half the width (64, head
# size 32 kept) and a quarter of the tokens (0.4 M), so tokens per parameter stay about cpu-small's
# (~1.6), in fp32 (at width 64 bf16 autocast costs more than it saves on a CPU: 109 vs 64 ms per
# 1024-token step), batch 8 x 128 tokens so it still takes 390 optimizer steps. About 30
# core-seconds a run vs ~260 for cpu-small. bench/preset_fidelity.py checks its ranking.
SCALES: dict[str, tuple[str, dict[str, Any]]] = {
    "cheap": (
        "cpu-small",
        {
            "model.d_model": 64,
            "model.n_heads": 2,
            "budget.batch_size": 8,
            "budget.tokens": 400_000,
            "runtime.precision": "fp32",
        },
    ),
}
# The cheap scale with its own scratch LR: 2e-3 beat cpu-small's 4e-3 there (4.975 vs 5.059,
# 8e-3 5.235; seed 1, bench/preset_fidelity.py), as cpu-small's LR is tuned at its own budget.
SCALES["cheap-lr2e-3"] = (SCALES["cheap"][0], {**SCALES["cheap"][1], "lr.peak": 2e-3})
# Two more candidates that keep cpu-small's 781 optimizer steps (its loss regime, where growth
# pays, may follow the steps rather than tokens per parameter; `cheap` took 390): cpu-small's own
# model at a quarter of the batch and tokens (LR halved, the square-root rule for a 4x smaller
# batch), and width 64 at half the tokens. fp32: the faster precision at these widths on a CPU.
SCALES["b4-400k"] = (
    "cpu-small",
    {
        "budget.batch_size": 4,
        "budget.tokens": 400_000,
        "lr.peak": 2e-3,
        "runtime.precision": "fp32",
    },
)
SCALES["w64-800k"] = (
    "cpu-small",
    {**SCALES["cheap"][1], "budget.batch_size": 8, "budget.tokens": 800_000},
)
RUN_OVERRIDES = {"runtime.threads": 1}  # every recorded run: one thread (2 cores shared)


@dataclass(frozen=True)
class Point:
    """One configuration of a landscape: a readable label and its dotted overrides."""

    label: str
    overrides: dict[str, Any]


def base_config(preset_name: str, overrides: dict[str, Any]) -> Config:
    """The scale's config: a product preset or a named scale, then the user's overrides."""
    preset, scale = SCALES.get(preset_name, (preset_name, {}))
    return resolve(preset, None, {**scale, **RUN_OVERRIDES, **overrides})


def point_config(base: Config, point: Point, seed: int) -> Config:
    """The full config of `point` on `seed` (validated: a bad grid point fails at plan time)."""
    return with_overrides(base, {**point.overrides, "seed": seed})


def config_id(cfg: Config) -> str:
    """A run's id without its seed: a hash of the knobs that differ from progtune's defaults.

    Not config_hash: a knob the product adds later (with its default) would change every hash
    and a continued recording would start again. The corpus is left out (a landscape folder
    holds one corpus, pinned by name in its _plan.json, wherever the cache puts the files)."""
    default = flatten(Config())
    diff = {k: v for k, v in flatten(cfg).items() if k not in _ID_EXCLUDED and v != default.get(k)}
    blob = json.dumps(diff, sort_keys=True, default=list).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


_ID_EXCLUDED = {
    "seed",
    "data.corpus",
    "data.cache_dir",
    "runtime.device",
    "runtime.threads",
    "runtime.checkpoint_every",
}


def point_id(base: Config, point: Point) -> str:
    """The id of `point` on `base`, the same on every seed."""
    return config_id(point_config(base, point, 0))


def scratch(base: Config, factor: float) -> Point:
    """Full depth from step 0 at `factor` x the preset's LR (warmup and schedule of the preset)."""
    n = base.model.n_layers
    overrides = {
        "stages.unique_layers": [n],
        "stages.boundaries": [],
        "sampling.strategy": "full",
        "lr.peak": round(base.lr.peak * factor, 8),
    }
    return Point(f"scratch lr x{factor:g}", overrides)


def grown(
    base: Config,
    schedule: tuple[int, ...],
    boundaries: tuple[float, ...],
    strategy: str,
    **knobs: Any,
) -> Point:
    """A progressive point; `knobs` are other dotted overrides, written with `__` for `.`."""
    overrides: dict[str, Any] = {
        "stages.unique_layers": list(schedule),
        "stages.boundaries": list(boundaries),
        "sampling.strategy": strategy,
    }
    overrides |= {k.replace("__", "."): v for k, v in knobs.items()}
    if "lr.peak_factor" in overrides:
        overrides["lr.peak"] = round(base.lr.peak * overrides.pop("lr.peak_factor"), 8)
    words = {"peak": "lr", "warmup_fraction": "warmup", "rewarmup_fraction": "rewarmup"}
    text = " ".join(
        f"{words.get(k.split('.')[-1], k.split('.')[-1])}={v}"
        for k, v in overrides.items()
        if "stages" not in k
    )
    label = f"{'-'.join(map(str, schedule))}@{','.join(f'{b:g}' for b in boundaries)} {text}"
    return Point(label, overrides)


def _boundary_levels(stages: int) -> list[tuple[float, ...]]:
    """Every boundary tuple of the grid for `stages` stages, strictly increasing in (0, 1)."""
    out = []
    for first in FIRST_BOUNDARIES:
        for shares in itertools.product(LATER_SHARES, repeat=stages - 2):
            position, bounds = first, [first]
            for share in shares:
                position = position + (1.0 - position) * share
                bounds.append(round(min(position, 0.95), 4))
            out.append(tuple(bounds))
    return out


def grid_points(base: Config) -> list[Point]:
    """Every progressive point of the grid, in a fixed order."""
    out = []
    for schedule in unique_layer_schedules(base.model.n_layers).values():
        levels = itertools.product(
            _boundary_levels(len(schedule)),
            STRATEGIES,
            OPERATORS,
            OPTIMIZER_STATES,
            LR_FACTORS,
            WARMUPS,
            LR_SCHEDULES,
            REWARMUPS,
        )
        for bounds, strategy, op, state, lr, warmup, sched, rewarm in levels:
            out.append(
                grown(
                    base,
                    schedule,
                    bounds,
                    strategy,
                    growth__operator=op,
                    growth__optimizer_state=state,
                    lr__peak_factor=lr,
                    lr__warmup_fraction=warmup,
                    lr__schedule=sched,
                    lr__rewarmup_fraction=rewarm,
                )
            )
    return out


def starting_points(base: Config) -> list[Point]:
    """The classic points: growth without sampling (both operators) and the Apollo recipe."""
    n = base.model.n_layers
    schedule = tuple(sorted({max(1, n // 4), max(1, n // 2), n}))
    bounds = (0.2, 0.5)[-(len(schedule) - 1) :] if len(schedule) > 1 else ()
    return [
        grown(base, schedule, bounds, "none", growth__operator="interpolation"),
        grown(base, schedule, bounds, "none", growth__operator="stacking"),
        grown(base, schedule, bounds, "lvps", growth__operator="interpolation"),
    ]


def landscape_plan(base: Config, n_grid: int, sample_seed: int = 0) -> list[Point]:
    """Scratch at every SCRATCH_LR_FACTOR (the preset's LR first: the reference), the starting
    points, then `n_grid` distinct grid points drawn with `sample_seed`. A prefix of the plan is
    itself a plan, so a recording stopped early is a smaller landscape, not a biased one."""
    head = [scratch(base, 1.0)] + [scratch(base, f) for f in SCRATCH_LR_FACTORS if f != 1.0]
    head += starting_points(base) if base.model.n_layers > 1 else []
    grid = grid_points(base) if base.model.n_layers > 1 else []
    random.Random(sample_seed).shuffle(grid)
    seen = {point_id(base, p) for p in head}
    out = list(head)
    for p in grid:
        if len(out) - len(head) >= n_grid:
            break
        pid = point_id(base, p)
        if pid not in seen:
            seen.add(pid)
            out.append(p)
    return out
