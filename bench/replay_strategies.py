"""Replayed search strategies: Optuna proposals over the product's space, snapped to the landscape's
configurations, and ASHA's stopping decisions replayed on recorded curves.

Proposals: a real Optuna study per search, asked through progtune.spaces.call_define (the space's
own define-by-run code, `apollo` by default, knobs pinned the product's way) with the sampler from
progtune.optuna_searcher.make_sampler and the space's starting points enqueued by
progtune.spaces.enqueue_starts. The start-up count is the product's
(progtune.optuna_searcher.startup_count: 8 samples, the laptop default -> 4).

Snapping (a table, not a surrogate): a landscape has ~150 configurations over ~10 knobs, too few
points per dimension for a faithful surrogate, and snapping keeps every score a real recorded
curve. A proposal goes to the nearest searchable configuration; distance = sum over knobs of:
categorical mismatch 1 (schedule, depth sampler, growth operator, optimizer state, LR schedule,
re-warmup, which the space draws from a list); floats (LR peak, warmup fraction, each boundary) by
|ln a - ln b| / ln(max/min) over the landscape's own values of that knob, so each float counts at
most ~1 like a categorical; a boundary list of another length counts 1. The depth sampler's
constants (lvps_low/high, edge_slope) are left out: the grid keeps the preset's. Ties go to the
first configuration in landscape order. A knob the space does not propose is the base's (the
product trains base + overrides), so it is compared at the base's value.

ASHA: Ray Tune's own bracket (ray.tune.schedulers.async_hyperband._Bracket) as progtune builds it
(tuning._scheduler: grace period = first of search_driver.asha_rungs, max_t = 2 x the last,
reduction factor 2, one bracket; loss minimised -> reward = -loss). The product evaluates at the
rungs (eval_at_flops), so a replayed trial reports at each rung's FLOPs with the loss of its last
recorded evaluation at or before them. `asha-after-growth` counts a trial's rungs in FLOPs after its
last growth, so no schedule is stopped during its cheap early stages and trials are compared at
equal full-depth compute.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
from replay_metrics import Landscape, Run

from progtune.config import flatten
from progtune.optuna_searcher import make_sampler, startup_count
from progtune.spaces import Space, call_define, enqueue_starts, load_space, start_points

CATEGORICAL = (
    "stages.unique_layers",
    "sampling.strategy",
    "growth.operator",
    "growth.optimizer_state",
    "lr.schedule",
    "lr.rewarmup_fraction",
)
FLOATS = ("lr.peak", "lr.warmup_fraction")
# Knobs a reduced space may pin when the landscape shows they do not matter (see reduced_pins).
REDUCIBLE = (
    "sampling.strategy",
    "growth.operator",
    "growth.optimizer_state",
    "lr.schedule",
    "lr.rewarmup_fraction",
    "lr.warmup_fraction",
)


def _key(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple, np.ndarray)) else value


def _log_span(values: np.ndarray) -> float:
    pos = values[values > 0]
    return math.log(pos.max() / pos.min()) if len(pos) and pos.max() > pos.min() else 1.0


def _base_knobs(land: Landscape) -> dict[str, Any]:
    """The snapped knobs at the landscape's base (a space that does not propose one trains it)."""
    flat = flatten(land.base)
    return {k: flat[k] for k in (*CATEGORICAL, *FLOATS, "stages.boundaries") if k in flat}


class SnapTable:
    """The searchable configurations as arrays; `snap` returns the nearest one and its distance."""

    def __init__(self, land: Landscape, untried: bool = False):
        self.untried = untried  # a proposal snaps to the nearest configuration not yet tried
        self.base = _base_knobs(land)
        rows = land.knobs.loc[land.searchable]
        self.ids = list(land.searchable)
        self.cats = {k: [_key(v) for v in rows[k]] for k in CATEGORICAL}
        self.floats = {k: rows[k].to_numpy(float) for k in FLOATS}
        self.spans = {k: _log_span(v) for k, v in self.floats.items()}
        bounds = [np.asarray(b, float) for b in rows["stages.boundaries"]]
        self.n_bounds = np.array([len(b) for b in bounds])
        width = max(self.n_bounds.max(), 1)
        self.bounds = np.full((len(bounds), width), np.nan)
        for i, b in enumerate(bounds):
            self.bounds[i, : len(b)] = b
        self.bound_span = _log_span(self.bounds[np.isfinite(self.bounds)])

    def distances(self, overrides: dict[str, Any]) -> np.ndarray:
        overrides = {**self.base, **overrides}
        d = np.zeros(len(self.ids))
        for k, values in self.cats.items():
            want = _key(overrides.get(k))
            d += np.array([v != want for v in values], float)
        for k, values in self.floats.items():
            d += np.abs(np.log(values / float(overrides[k]))) / self.spans[k]
        want = np.asarray(overrides.get("stages.boundaries", []), float)
        same = np.flatnonzero(self.n_bounds == len(want))  # else the list counts 1
        part = np.ones(len(self.ids))
        if len(want) == 0:
            part[same] = 0.0
        elif len(want) <= self.bounds.shape[1]:
            diff = np.abs(np.log(self.bounds[same, : len(want)] / want)) / self.bound_span
            part[same] = diff.mean(axis=1)
        d += part
        return d

    def snap(
        self, overrides: dict[str, Any], tried: frozenset[str] = frozenset()
    ) -> tuple[str, float]:
        """The nearest configuration; with `untried`, the nearest one not in `tried` (this
        search's earlier trials) while any is left."""
        d = self.distances(overrides)
        if self.untried and tried and len(tried) < len(self.ids):
            d = np.where([c in tried for c in self.ids], np.inf, d)
        i = int(np.argmin(d))
        return self.ids[i], float(d[i])

    def point(
        self, overrides: dict[str, Any], tried: frozenset[str] = frozenset()
    ) -> tuple[str, float, None]:
        """What the simulator asks of a snapper (replay_surrogate.Surrogate too): the
        configuration a proposal trains, its distance, and no predicted values."""
        return (*self.snap(overrides, tried), None)

    def score_series(self, score: Any, trials: list, seed: int) -> Any:
        """The savings a search is scored on: the recorded ones only."""
        return score


@dataclass(frozen=True)
class Strategy:
    """How one replayed search proposes and stops trials."""

    sampler: str  # progtune.optuna_searcher.SAMPLERS name
    starts: bool  # the space's starting points enqueued first (the product always does)
    scheduler: str = "none"  # none | asha | asha-after-growth
    reduced: bool = False  # knobs the landscape shows do not matter pinned (reduced_pins)
    num_samples: int | None = None  # sets the start-up count; None: the replay's --num-samples


DEFAULT = "default"  # `progtune search` as shipped: read from the product (product_default)
STRATEGIES: dict[str, Strategy] = {
    "random": Strategy("random", starts=False),
    "random+starts": Strategy("random", starts=True),
    "tpe": Strategy("tpe", starts=False),
    "tpe+starts": Strategy("tpe", starts=True),  # `progtune search` today (slots 2)
    "tpe-reduced": Strategy("tpe", starts=True, reduced=True),
    "gp": Strategy("gp", starts=True),  # `--sampler gp`
    "asha": Strategy("tpe", starts=True, scheduler="asha"),  # `--scheduler asha`
    "asha-after-growth": Strategy("tpe", starts=True, scheduler="asha-after-growth"),
}


def product_default() -> Strategy:
    """What `progtune search` does with no flags, read from the product: its own parser's
    defaults (`search` alone) turned into settings by its own code (search_settings._new_settings
    decides the sampler, `tpe`, and the trial count, 8, there). The starting points are always
    enqueued (optuna_searcher.make_searcher); the space is `--space`, by default the product's
    (search_args.DEFAULT_SPACE)."""
    from progtune.cli import build_parser
    from progtune.search_settings import _new_settings

    args = build_parser().parse_args(["search"])
    settings = _new_settings(args, None, None, {}, [], {}, "", "replay")
    return Strategy(
        settings.sampler,
        starts=True,
        scheduler=settings.scheduler,
        num_samples=settings.num_samples,
    )


def strategy_names() -> list[str]:
    return [DEFAULT, *STRATEGIES]


def strategy(name: str) -> Strategy:
    """A named strategy; `default` is the product's (read each time: it follows the product)."""
    return product_default() if name == DEFAULT else STRATEGIES[name]


def reduced_pins(land: Landscape, seed: int, tolerance: float = 0.02) -> dict[str, Any]:
    """Knobs that do not matter on `seed`'s scores, pinned to their best level.

    For each REDUCIBLE knob, the median saving of the searchable configs at each of its levels;
    where the best and worst level medians differ by less than `tolerance` (2 points) the knob
    is pinned to the best level. Only the selection seed is read (the scoring seed stays unseen).
    """
    knobs = land.knobs.loc[land.searchable]
    saving = np.array([land.saving(c, seed) for c in land.searchable])
    saving = np.where(np.isfinite(saving), saving, -1.0)
    pins = {}
    for k in REDUCIBLE:
        levels = knobs[k].map(_key)
        medians = {lv: float(np.median(saving[levels.to_numpy() == lv])) for lv in levels.unique()}
        if len(medians) > 1 and max(medians.values()) - min(medians.values()) < tolerance:
            best = max(medians, key=medians.get)
            pins[k] = best.item() if isinstance(best, np.generic) else best
    return pins


@dataclass
class OptunaProposer:
    """One Optuna study over the product's space: ask -> overrides, tell how a trial ended."""

    space: Space
    land: Landscape
    sampler: optuna.samplers.BaseSampler
    starts: bool
    pinned: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self.study = optuna.create_study(direction="minimize", sampler=self.sampler)
        if self.starts:
            enqueue_starts(self.study, self.space, self.land.base, self.pinned)

    def ask(self) -> tuple[Any, dict[str, Any]]:
        trial = self.study.ask()
        return trial, call_define(self.space, trial, self.land.base, self.pinned)

    def tell(self, trial: Any, state: str, value: float | None, curve: list[dict]) -> None:
        if state == "COMPLETE" and value is not None and math.isfinite(value):
            self.study.tell(trial, value)
            return
        if state == "PRUNED":  # the product reports a stopped trial's losses (step = tokens)
            seen = set()
            for row in curve:
                if math.isfinite(row["eval_loss"]) and row["tokens"] not in seen:
                    seen.add(row["tokens"])
                    trial.report(row["eval_loss"], step=int(row["tokens"]))
            self.study.tell(trial, None, state=optuna.trial.TrialState.PRUNED)
            return
        self.study.tell(trial, None, state=optuna.trial.TrialState.FAIL)

    def told(self) -> int:
        done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        done += (optuna.trial.TrialState.FAIL,)
        return len(self.study.get_trials(deepcopy=False, states=done))


def make_proposer(
    name: str,
    land: Landscape,
    search_seed: int,
    select_seed: int,
    space_name: str,
    num_samples: int,
    reduce_tolerance: float = 0.02,
) -> OptunaProposer:
    """Strategy `name`'s proposer: its seeded sampler, starts, and pins for a reduced space."""
    chosen = strategy(name)
    startup = startup_count(chosen.num_samples or num_samples)
    sampler = make_sampler(chosen.sampler, search_seed, startup)
    pinned = reduced_pins(land, select_seed, reduce_tolerance) if chosen.reduced else {}
    return OptunaProposer(load_space(space_name), land, sampler, chosen.starts, pinned)


def start_configs(land: Landscape, snap: SnapTable, space_name: str) -> list[str]:
    """The space's starting points (what `+starts` enqueues), snapped to the landscape."""
    space = load_space(space_name)
    params = start_points(space, land.base, {})
    trials = [optuna.trial.FixedTrial(p) for p in params]
    return [snap.snap(call_define(space, t, land.base, {}))[0] for t in trials]


def last_growth_flops(run: Run) -> float:
    """FLOPs spent by a run's last growth: back from its first eval point at or after the growth
    tokens along the last stage's FLOPs per token (constant in expectation within a stage)."""
    if run.growth_tokens <= 0:
        return 0.0
    after = np.flatnonzero(run.tokens >= run.growth_tokens)
    if len(after) == 0:
        return run.total_flops
    i = after[0]
    span = run.total_tokens - run.tokens[i]
    rate = (run.total_flops - run.flops[i]) / span if span > 0 else 0.0
    return float(max(0.0, run.flops[i] - rate * (run.tokens[i] - run.growth_tokens)))


class AshaReplay:
    """Ray Tune's ASHA bracket, fed the reports a trial makes at the product's rungs."""

    def __init__(self, rungs: list[float], after_growth: bool):
        from ray.tune.schedulers.async_hyperband import _Bracket

        self.rungs, self.after_growth = list(rungs), after_growth
        self.bracket = _Bracket(min_t=rungs[0], max_t=2 * rungs[-1], reduction_factor=2, s=0)

    def checks(self, run: Run) -> list[tuple[float, float]]:
        """(FLOPs into the trial, ASHA time) of each rung report the trial reaches before its
        end: as in the product, the row at a trial's last step carries no ASHA clock, so a rung
        that falls exactly at its end decides nothing. The after-growth offset is the recorded
        growth point (the product plans it: within ~1.5 % with depth sampling)."""
        offset = last_growth_flops(run) if self.after_growth else 0.0
        end = run.total_flops * (1 - 1e-9)
        return [(offset + m, m) for m in self.rungs if offset + m < end]

    def decide(self, trial_id: str, asha_time: float, loss: float) -> bool:
        """True: stop the trial (its reward -loss is below the rung's cutoff)."""
        trial = SimpleNamespace(trial_id=trial_id)
        return self.bracket.on_result(trial, asha_time, -loss) == "STOP"


def make_scheduler(name: str, rungs: list[float]) -> AshaReplay | None:
    scheduler = strategy(name).scheduler
    if scheduler == "none":
        return None
    return AshaReplay(rungs, after_growth=scheduler == "asha-after-growth")


def gp_missing() -> str | None:
    """Why gp cannot run here (Optuna's GPSampler needs scipy), or None."""
    try:
        import scipy  # noqa: F401
    except ImportError:
        return "gp skipped: Optuna's GPSampler needs scipy (.venv/bin/pip install scipy)"
    return None


ProposerFactory = Callable[[str, Landscape, int, int], OptunaProposer]
