"""Replay search strategies on a recorded landscape at zero training cost (issue 11, part 3).

    .venv/bin/python bench/search_replay.py LANDSCAPE_FOLDER [--strategies a,b] [--seeds 30]
        [--slots 2] [--budget 32] [--space NAME|FILE.py] [--out DIR]

A simulator modelled on Syne Tune's simulator backend (syne_tune.blackbox_repository.
BlackboxRepositoryBackend with backend.simulator_backend.simulator_callback.SimulatorCallback, as
in its examples/launch_nasbench201_simulated.py: a simulated clock, a trial "runs" for its recorded
cost and its results arrive in simulated-time order, so asynchronous decisions see what a real
search would have seen). The clock counts FLOPs per slot (every slot trains at the same FLOP
rate): a trial started at t on the recorded run of its configuration reports each rung at t + its
FLOPs and ends at t + its total FLOPs. Slots (default 2) are asynchronous: a proposal is made only
into a free slot, after every finished trial was told to the study (COMPLETE with the product's
objective, PRUNED with its losses when ASHA stopped it, FAIL for a run that failed; a diverged run
is COMPLETE with the objective's surrogate, because that is what the product tells), as the
product's ProgtuneOptunaSearch gate does; trials still running stay RUNNING in the study (TPE's
constant liar sees them). The target is known from the start (the product reuses a stored
reference, `--reference`); the reference's own cost is not counted. A search ends once `--budget`
run-equivalents are spent (trials still running then are not counted as finished).

Each search (strategy x search seed) selects its incumbent on one training seed - the finished
COMPLETE trial with the lowest objective there - and is scored on the other seed; with seeds 1, 2
both directions count; it is compared with two ceilings (the landscape's best saving on the
scoring seed, and what a perfect selector reaches there: replay_metrics.CEILINGS). Strategies
(`default` = `progtune search` as shipped, read from the product), snapping and ASHA:
bench/replay_strategies.py; `--snap surrogate` (values predicted at a proposal's own point, the
ceilings then): bench/replay_surrogate.py; scores and metrics: bench/replay_metrics.py. `--space`
replays another space (a shipped name or a .py file, as `progtune search --space`). Writes
DIR/replay.parquet (one row per strategy, search seed and selection seed), DIR/summary.parquet
(one row per strategy), DIR/replay.png (regret vs compute, a panel per ceiling) and
DIR/replay.md (the printed tables).
Optuna's GPSampler (`gp`) runs torch: the replay holds torch to 1 thread (on a shared 2-core
machine its default threads made a search 6x slower: 65 s against 11 s).
"""

from __future__ import annotations

import argparse
import heapq
import math
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from replay_metrics import (
    BUDGETS,
    CEILINGS,
    REFERENCE_LABEL,
    Landscape,
    LandscapeError,
    Run,
    ceilings,
    compute_to_within,
    load_landscape,
    markdown_table,
    plot_regret,
    regret_curve,
    scores,
    seed_noise,
    summarize,
)
from replay_strategies import (
    AshaReplay,
    OptunaProposer,
    SnapTable,
    gp_missing,
    make_proposer,
    make_scheduler,
    reduced_pins,
    start_configs,
    strategy,
    strategy_names,
)
from replay_surrogate import Surrogate

from progtune.atomic import write_atomic, write_text_atomic
from progtune.errors import ProgtuneError
from progtune.search_args import DEFAULT_SPACE
from progtune.spaces import load_space

MAX_TRIALS = 2000  # a guard: zero-cost (failed at set-up) runs cannot loop forever


@dataclass
class Trial:
    number: int
    optuna_trial: Any
    cfg_id: str
    run: Run
    start: float  # simulated clock (FLOPs per slot) when it started
    snap_distance: float
    state: str = "RUNNING"
    values: dict[int, float] | None = None  # --snap surrogate: predicted objective per seed

    @property
    def key(self) -> str:
        """The incumbent's name: its configuration, or nearest~number for an off-grid point."""
        on_grid = self.values is None or self.snap_distance <= 1e-12
        return self.cfg_id if on_grid else f"{self.cfg_id}~{self.number}"


@dataclass
class SearchLog:
    """What one simulated search did: incumbent after each finish, and each proposal's view."""

    trace: list[tuple[float, str | None]] = field(default_factory=lambda: [(0.0, None)])
    asks: list[dict[str, int]] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    slots_held: int = 0  # trials in the simulator's running set when the last proposal was made


def _finish(
    trial: Trial, state: str, elapsed: float, proposer: OptunaProposer, land, seed
) -> float:
    """Tell the study how `trial` ended; returns the objective told (inf if none)."""
    trial.state = state
    value = None
    if state == "COMPLETE":
        value = trial.values[seed] if trial.values else land.objective(trial.cfg_id, seed)
    curve = [r for r in trial.run.rows() if r["flops"] <= elapsed * (1 + 1e-12)]
    proposer.tell(trial.optuna_trial, state, value, curve)
    return math.inf if value is None else value


def _start(
    log: SearchLog, proposer, snap: SnapTable | Surrogate, land, seed: int, now: float, free: int
) -> Trial:
    """Ask for a proposal into one of `free` slots, snap it and start it at `now`; log what the
    proposal saw (a trial is started the moment it is proposed: none waits unstarted)."""
    finished = sum(t.state != "RUNNING" for t in log.trials)
    log.asks.append(
        {
            "free_slots": free,
            # proposed but neither running (holding a slot) nor finished
            "unstarted": len(log.trials) - finished - log.slots_held,
            "finished": finished,
            "told": proposer.told(),
        }
    )
    optuna_trial, overrides = proposer.ask()
    # the snapped run's cost and curve; a surrogate also predicts the values at the point
    cfg_id, distance, values = snap.point(overrides, frozenset(t.cfg_id for t in log.trials))
    run = land.runs[(cfg_id, seed)]
    trial = Trial(len(log.trials), optuna_trial, cfg_id, run, now, distance, values=values)
    log.trials.append(trial)
    return trial


def simulate(
    land: Landscape,
    proposer: OptunaProposer,
    scheduler: AshaReplay | None,
    select_seed: int,
    slots: int = 2,
    budget: float = 32.0,
    snap: SnapTable | Surrogate | None = None,
) -> SearchLog:
    """One asynchronous search on `slots` slots until `budget` run-equivalents are spent."""
    snap = snap or SnapTable(land)
    limit = budget * land.reference(select_seed).total_flops
    log, events, running = SearchLog(), [], {}
    now = spent = 0.0
    best = (math.inf, None)
    while True:
        while len(running) < slots and spent < limit and len(log.trials) < MAX_TRIALS:
            log.slots_held = len(running)
            t = _start(log, proposer, snap, land, select_seed, now, slots - len(running))
            running[t.number] = t
            for flops, asha_time in scheduler.checks(t.run) if scheduler else []:
                heapq.heappush(events, (now + flops, t.number, "rung", asha_time))
            heapq.heappush(events, (now + t.run.total_flops, t.number, "end", 0.0))
        if not running or spent >= limit:
            end = spent / land.reference(select_seed).total_flops
            if end > log.trace[-1][0]:  # e.g. the last event a rung that stopped nothing
                log.trace.append((end, best[1]))
            return log
        when, number, kind, asha_time = heapq.heappop(events)
        if number not in running:
            continue  # stopped by ASHA earlier
        spent += (when - now) * len(running)
        now, trial = when, running[number]
        elapsed = now - trial.start
        if kind == "rung":
            loss = trial.run.loss_at(elapsed, land.vocab_size)
            if not scheduler.decide(str(number), asha_time, loss):
                continue
            state = "PRUNED"
        else:
            # as the product tells it: a diverged run ends with a final report (COMPLETE, with
            # the objective's surrogate); a run that failed with an error is FAIL
            state = "FAIL" if trial.run.status == "failed" else "COMPLETE"
        value = _finish(running.pop(number), state, elapsed, proposer, land, select_seed)
        if value < best[0]:
            best = (value, trial.key)
        log.trace.append((spent / land.reference(select_seed).total_flops, best[1]))


def replay_one(
    land: Landscape,
    name: str,
    search_seed: int,
    select_seed: int,
    table: pd.DataFrame,
    opts: argparse.Namespace,
    snap: SnapTable | Surrogate,
    rungs: list[float],
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One search of strategy `name`: its result row and its regret curve against each ceiling
    (CEILINGS) on the compute grid."""
    score_seed = next(s for s in land.seeds if s != select_seed)
    proposer = make_proposer(
        name,
        land,
        search_seed,
        select_seed,
        opts.space,
        opts.num_samples,
        opts.reduce_tolerance / 100,
    )
    log = simulate(
        land, proposer, make_scheduler(name, rungs), select_seed, opts.slots, opts.budget, snap
    )
    score = snap.score_series(table[f"saving_s{score_seed}"], log.trials, score_seed)
    targets, picked = ceilings(table, select_seed, score_seed)
    grid = compute_grid(opts.budget)
    row: dict[str, Any] = {
        "strategy": name,
        "search_seed": search_seed,
        "select_seed": select_seed,
        "score_seed": score_seed,
        "best_saving": targets["best"],
        "selector_config": picked,
        "selector_saving": targets["selector"],
        "final_incumbent": log.trace[-1][1],
        "trials": len(log.trials),
        "pruned": sum(t.state == "PRUNED" for t in log.trials),
        "distinct_configs": len({t.cfg_id for t in log.trials}),
        "distinct_points": len({t.key for t in log.trials}),
        "mean_snap_distance": float(np.mean([t.snap_distance for t in log.trials])),
    }
    regrets = {}
    for ceiling, target in targets.items():
        row[f"compute_to_{ceiling}"] = compute_to_within(log.trace, score, target)
        regrets[ceiling] = regret_curve(log.trace, score, target, grid)
        for b in (b for b in BUDGETS if b <= opts.budget):
            at = np.searchsorted(grid, b, side="right") - 1
            row[f"regret_{ceiling}_at_{b:g}"] = float(regrets[ceiling][at])
    return row, regrets


def compute_grid(budget: float) -> np.ndarray:
    return np.linspace(0.0, budget, int(budget * 4) + 1)


def replay(
    land: Landscape, names: list[str], opts: argparse.Namespace, table: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    """Every strategy x search seed x selection seed (the other seed scores; `table`:
    replay_metrics.scores(land)); the regret curves as curves[ceiling][strategy] (searches x
    grid)."""
    from progtune.search_driver import asha_rungs  # imports Ray (as the ASHA bracket does)
    from progtune.search_state import reference_config

    rungs = asha_rungs(reference_config(land.base), land.vocab_size)
    snap: SnapTable | Surrogate = SnapTable(land, untried=opts.snap == "untried")
    if opts.snap == "surrogate":
        snap = Surrogate(land, snap)
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, np.ndarray]] = {c: {} for c in CEILINGS}
    for name in names:
        t0, regrets = time.perf_counter(), []
        for search_seed in range(opts.seeds):
            for select_seed in land.seeds[:2]:
                row, regret = replay_one(
                    land, name, search_seed, select_seed, table, opts, snap, rungs
                )
                rows.append(row)
                regrets.append(regret)
        for c in CEILINGS:
            curves[c][name] = np.array([r[c] for r in regrets])
        print(f"  {name}: {len(regrets)} searches in {time.perf_counter() - t0:.1f} s", flush=True)
    return pd.DataFrame(rows), curves


def landscape_lines(land: Landscape, table: pd.DataFrame, opts: argparse.Namespace) -> list[str]:
    """The landscape, each seed's target and best, what the starting points alone reach, and the
    knobs tpe-reduced pins."""
    runs = {s: sum(1 for _, seed in land.runs if seed == s) for s in land.seeds}
    lines = [
        f"landscape {land.folder}: {len(land.knobs)} configurations "
        f"({len(land.searchable)} searchable on every seed), runs per seed {runs}",
        f"space {opts.space} (sha256 {load_space(opts.space).sha256[:12]}); "
        f"default = {strategy('default')}; proposals snap to the {opts.snap} configuration",
    ]
    starts = start_configs(land, SnapTable(land), opts.space)
    for s in land.seeds[:2]:
        col = table[f"saving_s{s}"]
        hits = int((table[f"objective_s{s}"] <= land.reference(s).total_flops).sum())
        lines.append(
            f"seed {s}: target {land.reference(s).final_loss:.4f}, {hits} configurations reach "
            f"it, best saving {100 * col.max():.1f} % ({table.loc[col.idxmax(), 'label']})"
        )
        others = [c for c in land.knobs.index if c not in col.index and (c, s) in land.runs]
        if others:  # scratch at other LRs: not proposable by a space, so not "the best"
            top = max(others, key=lambda c: land.saving(c, s))
            lines.append(
                f"  (not searchable: best {100 * land.saving(top, s):.1f} % by "
                f"{land.knobs.loc[top, 'label']})"
            )
        if starts:
            best = max(col[c] for c in starts)
            gap = 100 * (col.max() - best)
            lines.append(
                f"  the {len(starts)} starting points alone: best {100 * best:.1f} % "
                f"({gap:.1f} points below the best{': within 2 points' if gap <= 2 else ''})"
            )
        pins = reduced_pins(land, s, opts.reduce_tolerance / 100)
        lines.append(f"  tpe-reduced selecting on seed {s} pins {pins}")
    for a, b in (land.seeds[:2], land.seeds[1::-1]):
        picked = table[f"saving_s{a}"].idxmax()
        got, best = table.loc[picked, f"saving_s{b}"], table[f"saving_s{b}"].max()
        lines.append(
            f"a perfect selector on seed {a} scores {100 * got:.1f} % on seed {b}, "
            f"{100 * (best - got):.1f} points below its best (within 2 points: "
            f"{'yes' if best - got <= 0.02 + 1e-12 else 'no'} - the ceiling of P(within best); "
            "P(within selector) compares with this"
        )
    noise, n = seed_noise(table, land.seeds)
    if n and noise > 0:
        top = table[[f"saving_s{s}" for s in land.seeds[:2]]].mean(axis=1).max()
        lines.append(
            f"seed noise: median |saving s{land.seeds[0]} - s{land.seeds[1]}| {100 * noise:.1f} "
            f"points over the {n} configurations that reach the target on both; the best mean "
            f"saving {100 * top:.1f} % is {top / noise:.1f}x that"
        )
    return lines


def write_outputs(
    results: pd.DataFrame, summary: pd.DataFrame, curves: dict, text: str, out: Path, budget: float
) -> None:
    for name, frame in (("replay", results), ("summary", summary)):
        table = pa.Table.from_pandas(frame, preserve_index=False)
        write_atomic(out / f"{name}.parquet", lambda f, t=table: pq.write_table(t, f))
    plot_regret(curves, compute_grid(budget), out / "replay.png")
    write_text_atomic(out / "replay.md", text + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("landscape", type=Path, help="landscape folder (bench/landscape.py --out)")
    p.add_argument(
        "--strategies",
        default=",".join(strategy_names()),
        help="comma-separated names; `default` is `progtune search` as shipped",
    )
    p.add_argument("--seeds", type=int, default=30, help="search seeds per strategy (>= 30)")
    p.add_argument("--slots", type=int, default=2, help="trials running at once (default 2)")
    p.add_argument("--budget", type=float, default=32.0, help="run-equivalents per search")
    p.add_argument(
        "--space",
        default=DEFAULT_SPACE,
        help=f"search space: a shipped name or a .py file (default the product's, {DEFAULT_SPACE})",
    )
    p.add_argument("--num-samples", type=int, default=8, help="sets TPE's start-up count (8)")
    p.add_argument(
        "--reduce-tolerance",
        type=float,
        default=2.0,
        help="tpe-reduced pins a knob whose level medians differ by less (points; default 2)",
    )
    p.add_argument(
        "--reference",
        default=REFERENCE_LABEL,
        help="label of the run that sets the target (default: scratch at the preset's LR; e.g. "
        "'scratch lr x1.41' for scratch at another LR of the landscape)",
    )
    p.add_argument(
        "--snap",
        choices=["nearest", "untried", "surrogate"],
        default="nearest",
        help="a proposal trains the nearest recorded configuration (default), or the nearest "
        "one this search has not tried yet: a table cannot reward a proposal next to a tried "
        "point, and 'untried' stands in for the new point a real search would train there; "
        "'surrogate' trains the nearest one's run but tells and scores the objective a k-NN "
        "surrogate predicts at the proposal's point (bench/replay_surrogate.py)",
    )
    p.add_argument("--out", type=Path, default=None, help="default: LANDSCAPE/../replay-NAME")
    return p.parse_args(argv)


def _check(opts: argparse.Namespace) -> list[str]:
    names = [n for n in opts.strategies.split(",") if n]
    unknown = [n for n in names if n not in strategy_names()]
    if unknown or not names:
        raise LandscapeError(
            f"unknown strategy {unknown or names}; choose from {', '.join(strategy_names())}"
        )
    try:
        space = load_space(opts.space)
    except ProgtuneError as exc:
        raise LandscapeError(str(exc)) from None
    if space.points is not None:
        raise LandscapeError(f"space {opts.space} is a list of fixed points: nothing to search")
    if opts.seeds < 1 or opts.slots < 1 or opts.budget <= 0:
        raise LandscapeError("--seeds, --slots and --budget must be positive")
    if any(strategy(n).sampler == "gp" for n in names) and (why := gp_missing()):
        print(why)
        names = [n for n in names if strategy(n).sampler != "gp"]
        if not names:
            raise LandscapeError("no strategy left to replay (gp needs scipy)")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    torch.set_num_threads(1)  # GPSampler's torch: threads only contend in this serial loop
    try:
        names = _check(opts)
        land = load_landscape(opts.landscape, opts.reference)
    except LandscapeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = opts.out or opts.landscape.parent / f"replay-{opts.landscape.name}"
    table = scores(land)
    print("\n".join(landscape_lines(land, table, opts)))
    results, curves = replay(land, names, opts, table)
    summary = summarize(results, opts.budget)
    text = markdown_table(summary)
    print(text)
    write_outputs(results, summary, curves, text, out, opts.budget)
    print(f"wrote {out}/replay.parquet, summary.parquet, replay.png, replay.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
