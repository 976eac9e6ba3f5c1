"""Check the replay against reality: a real `progtune search` beside a recorded landscape.

    .venv/bin/python bench/replay_check.py LANDSCAPE --write-config scale.yaml [--seed 1]
    .venv/bin/progtune search --preset cpu-small --config scale.yaml      # the real search
    .venv/bin/python bench/replay_check.py LANDSCAPE EXPERIMENT [--strategy default] [--seeds 30]
        [--slots 2] [--space apollo]

The real search must run at the landscape's scale (bench/landscape_space.SCALES, e.g. b4-400k:
cpu-small with batch 4, 0.4 M tokens, LR 2e-3, fp32; one thread) on one of its seeds (1 or 2; the
product's default seed is 0, which no landscape holds). `--write-config` writes those knobs as a
YAML for `--config`: a config file sets the base without pinning anything (KEY=VALUE arguments
would pin the LR and so take it out of the search).

For every finished run of the experiment (its reference and each completed or diverged search
trial, from trials.parquet): its real saving (progtune.results.saving of its objective against the
reference run's FLOPs to target, as the landscape scores its runs), the nearest landscape
configuration (replay_strategies.SnapTable: what the replay would have trained), the snap
distance, and that configuration's recorded saving and final loss on the trial's seed. A run whose
training knobs all equal a recorded configuration's (snap distance 0; evaluation and run-time
knobs aside) is an exact grid point: training is bitwise deterministic in-process with 1 thread,
so its final loss must equal the recorded one (to 1e-6) and its saving the recorded one (to
0.1 points; they can differ only through other evaluation points); a mismatch is flagged.

Then the search as a whole: the real incumbent (lowest objective) and best saving, on the
trial's seed, against `--seeds` replayed searches of `--strategy` selecting on that seed with the
same compute (run-equivalents the real search trained; trials still running at the end are not
counted, as in the replay): the replayed incumbents' savings on that seed (in-sample, like the
real figure), their median and 10-90 % range, and where the real one falls among them.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from replay_metrics import WITHIN, Landscape, LandscapeError, load_landscape
from replay_strategies import (
    CATEGORICAL,
    FLOATS,
    SnapTable,
    make_proposer,
    make_scheduler,
    strategy_names,
)

from progtune.config import KNOB_TYPES
from progtune.errors import ProgtuneError
from progtune.results import ADDED_COLUMNS, saving
from progtune.search_args import DEFAULT_SPACE

FINISHED = ("completed", "diverged")
# Knobs that do not change what is trained: where it runs, how often it checkpoints, and which
# points are evaluated (ASHA's eval.at_flops). The seed is compared on its own.
NOT_TRAINING = (
    "seed",
    "data.cache_dir",
    "runtime.device",
    "runtime.threads",
    "runtime.checkpoint_every",
    "eval.at_flops",
    "eval.points",
)
LOSS_TOLERANCE = 1e-6  # bitwise deterministic: equal but for float formatting
SAVING_TOLERANCE = 0.001  # 0.1 points: the same curve evaluated at other points


def _plain(value: Any) -> Any:
    """A knob value from pandas or pyarrow as plain Python: lists, None for any missing value."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _same(a: Any, b: Any) -> bool:
    a, b = _plain(a), _plain(b)
    if isinstance(a, list) or isinstance(b, list):
        a, b = a or [], b or []
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def knob_differences(trial: pd.Series, recorded: pd.Series) -> list[str]:
    """Training knobs where a real run and a recorded configuration differ (a column added
    after one of them was written, empty there, is not compared: results.ADDED_COLUMNS)."""
    names = [k for k in KNOB_TYPES if k not in NOT_TRAINING and k in trial and k in recorded]
    unknown = {k for k in ADDED_COLUMNS if _plain(trial.get(k)) is None}
    unknown |= {k for k in ADDED_COLUMNS if _plain(recorded.get(k)) is None}
    return [k for k in names if k not in unknown and not _same(trial[k], recorded[k])]


def scale_lines(trials: pd.DataFrame, land: Landscape) -> list[str]:
    """The knobs where the real reference run differs from the landscape's: the search did not
    run at the landscape's scale (its savings are then not comparable run for run)."""
    ref = trials[trials["role"] == "reference"]
    if ref.empty:
        return ["no reference run in this experiment (reused): its scale is not checked"]
    recorded = land.knobs.loc[land.reference_id]
    differ = knob_differences(ref.iloc[0], recorded)
    if not differ:
        return [f"the reference run is at the landscape's scale ({land.folder.name})"]
    shown = ", ".join(f"{k} {_plain(ref.iloc[0][k])} vs {_plain(recorded[k])}" for k in differ)
    return [f"NOT at the landscape's scale (real vs recorded reference): {shown}"]


def _overrides(trial: pd.Series) -> dict[str, Any]:
    keys = (*CATEGORICAL, *FLOATS, "stages.boundaries")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in trial.items() if k in keys}


def _reference_flops_to_target(trials: pd.DataFrame) -> float | None:
    """The real reference run's FLOPs to its own target (None: not in this experiment)."""
    ref = trials[(trials["role"] == "reference") & trials["flops_to_target"].notna()]
    return float(ref["flops_to_target"].iloc[0]) if len(ref) else None


def real_saving(trial: pd.Series, c_ref: float | None) -> float:
    """The run's saving scored as the landscape scores its runs (a miss: the surrogate's, <= 0)."""
    value = saving(trial["objective"], c_ref) if c_ref else trial["saving"]
    return -math.inf if value is None or pd.isna(value) else float(value)


def check_rows(trials: pd.DataFrame, land: Landscape, snap: SnapTable) -> pd.DataFrame:
    """One row per finished reference or search run: real vs recorded (module doc)."""
    c_ref = _reference_flops_to_target(trials)
    done = trials[trials["role"].isin(("reference", "search")) & trials["status"].isin(FINISHED)]
    rows = []
    for _, t in done.iterrows():
        seed = int(t["seed"])
        if t["role"] == "reference":
            cfg_id, distance = land.reference_id, 0.0
        else:
            cfg_id, distance = snap.snap(_overrides(t))
        recorded = land.knobs.loc[cfg_id]
        differ = knob_differences(t, recorded)
        on_seed = (cfg_id, seed) in land.runs
        row = {
            "trial_id": t["trial_id"],
            "role": t["role"],
            "seed": seed,
            "threads": t.get("runtime.threads"),
            "real_saving": real_saving(t, c_ref),
            "real_final_loss": float(t["final_eval_loss"]),
            "snapped": cfg_id,
            "label": recorded["label"],
            "snap_distance": distance,
            "exact": distance < 1e-9 and not differ,
            "differs_in": ",".join(differ),
            "recorded_saving": land.saving(cfg_id, seed) if on_seed else math.nan,
            "recorded_final_loss": land.runs[(cfg_id, seed)].final_loss if on_seed else math.nan,
        }
        rows.append(row | {"match": _match(row) if row["exact"] and on_seed else None})
    return pd.DataFrame(rows)


def _match(row: dict[str, Any]) -> bool:
    loss_ok = abs(row["real_final_loss"] - row["recorded_final_loss"]) <= LOSS_TOLERANCE
    a, b = row["real_saving"], row["recorded_saving"]
    saving_ok = (a == b) or abs(a - b) <= SAVING_TOLERANCE
    return bool(loss_ok and saving_ok)


def spent_run_equivalents(trials: pd.DataFrame, land: Landscape, seed: int) -> float:
    """Compute the real search trained in finished and stopped search trials, in run-equivalents
    of the landscape's reference on `seed` (the reference run itself not counted, as in replay)."""
    search = trials[(trials["role"] == "search") & (trials["status"] != "running")]
    return float(search["total_flops"].fillna(0).sum()) / land.reference(seed).total_flops


def replayed_incumbents(
    land: Landscape, opts: argparse.Namespace, seed: int, budget: float
) -> np.ndarray:
    """The in-sample saving on `seed` of each replayed search's final incumbent (`--seeds`
    searches of `--strategy` selecting on `seed` with `budget` run-equivalents)."""
    from search_replay import simulate

    rungs: list[float] = []
    if make_scheduler(opts.strategy, [1.0]) is not None:
        from progtune.search_driver import asha_rungs  # imports Ray
        from progtune.search_state import reference_config

        rungs = asha_rungs(reference_config(land.base), land.vocab_size)
    snap, out = SnapTable(land), []
    for search_seed in range(opts.seeds):
        proposer = make_proposer(
            opts.strategy, land, search_seed, seed, opts.space, opts.num_samples
        )
        scheduler = make_scheduler(opts.strategy, rungs) if rungs else None
        log = simulate(land, proposer, scheduler, seed, opts.slots, budget, snap)
        incumbent = log.trace[-1][1]
        out.append(0.0 if incumbent is None else land.saving(incumbent, seed))
    return np.array(out)


def _pct(x: float) -> str:
    """A saving: a miss (the surrogate's saving, < 0) or failed run says so; nan: not recorded."""
    if math.isnan(x):
        return "-"
    return "failed" if x == -math.inf else "miss" if x < 0 else f"{100 * x:.1f} %"


def run_lines(rows: pd.DataFrame) -> list[str]:
    head = "| trial | role | seed | real saving | snapped to | distance | exact | recorded saving"
    lines = [head + " | real / recorded final loss | check |", "|" + "---|" * 10]
    for r in rows.to_dict("records"):
        check = {True: "match", False: "MISMATCH", None: ""}[r["match"]]
        if r["exact"] and r["match"] is None:
            check = "seed not recorded"
        if r["match"] is False and r["threads"] not in (1, None):
            check += f" (trained on {r['threads']} threads: not bitwise reproducible)"
        exact = "yes" if r["exact"] else ("no: " + r["differs_in"] if r["differs_in"] else "no")
        cells = [r["trial_id"], r["role"], str(r["seed"]), _pct(r["real_saving"]), r["label"]]
        cells += [f"{r['snap_distance']:.3f}", exact, _pct(r["recorded_saving"])]
        cells += [f"{r['real_final_loss']:.6f} / {r['recorded_final_loss']:.6f}", check]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary_lines(
    rows: pd.DataFrame, trials: pd.DataFrame, land: Landscape, opts: argparse.Namespace
) -> list[str]:
    """The real search's incumbent and best against the replay of the same strategy."""
    search = rows[rows["role"] == "search"]
    if search.empty:
        return ["no finished search trial: nothing to compare"]
    seed = int(search["seed"].mode().iloc[0])
    lines = []
    if seed not in land.seeds:
        lines.append(f"the search ran on seed {seed}, not recorded here: replayed on seed 1")
        seed = land.seeds[0]
    exact = search[search["exact"]]
    lines.append(
        f"{len(search)} finished search trials; {len(exact)} at exact grid points, "
        f"{int((exact['match'] == True).sum())} of them match the recording"  # noqa: E712
    )
    objective = trials.set_index("trial_id")["objective"].astype(float).fillna(math.inf)
    incumbent = search.iloc[int(np.argmin(objective[search["trial_id"]].to_numpy()))]
    budget = spent_run_equivalents(trials, land, seed)
    best = max(land.saving(c, seed) for c in land.searchable)
    lines.append(
        f"real search: {budget:.1f} run-equivalents; incumbent {incumbent['trial_id']} saves "
        f"{_pct(incumbent['real_saving'])} (its snapped configuration: recorded "
        f"{_pct(incumbent['recorded_saving'])}); best saving of any trial "
        f"{_pct(search['real_saving'].max())}; the landscape's best on seed {seed}: {_pct(best)}"
    )
    replayed = replayed_incumbents(land, opts, seed, max(budget, 1e-9))
    below = float(np.mean(replayed < incumbent["real_saving"]))
    within = float(np.mean(best - replayed <= WITHIN + 1e-12))
    lines.append(
        f"replay of {opts.strategy} ({opts.seeds} search seeds, {opts.slots} slots, the same "
        f"compute, selecting and scored on seed {seed}): incumbent saving median "
        f"{_pct(float(np.median(replayed)))} [10-90 %: {_pct(np.quantile(replayed, 0.1))}, "
        f"{_pct(np.quantile(replayed, 0.9))}]; the real incumbent is above {100 * below:.0f} % "
        f"of them; within 2 points of the best: replay {100 * within:.0f} %, real "
        f"{'yes' if best - incumbent['real_saving'] <= WITHIN + 1e-12 else 'no'}"
    )
    return lines


def scale_config(land: Landscape, seed: int) -> dict[str, Any]:
    """The knobs a real search needs to run at the landscape's scale on `seed` (for --config)."""
    import json

    from landscape_space import RUN_OVERRIDES, SCALES

    plan = json.loads((land.folder / "_plan.json").read_text())
    preset, overrides = SCALES.get(plan["preset"], (plan["preset"], {}))
    corpus = land.knobs.loc[land.reference_id, "data.corpus"]
    knobs = {**overrides, **RUN_OVERRIDES, "data.corpus": corpus, "seed": seed}
    return {"preset": preset, "knobs": knobs}


def write_config(land: Landscape, seed: int, path: Path) -> None:
    import yaml

    scale = scale_config(land, seed)
    path.write_text(yaml.safe_dump(scale["knobs"], sort_keys=True))
    print(f"wrote {path}; run the real search with (nothing pinned, so everything is searched):")
    print(f"  progtune search --preset {scale['preset']} --config {path}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("landscape", type=Path, help="landscape folder (bench/landscape.py --out)")
    p.add_argument("experiment", nargs="?", help="the real search's folder STORAGE/NAME")
    p.add_argument("--write-config", type=Path, help="write the scale's knobs as YAML and stop")
    p.add_argument("--seed", type=int, default=1, help="seed for --write-config (1)")
    p.add_argument("--strategy", default="default", help="replayed strategy (default)")
    p.add_argument("--seeds", type=int, default=30, help="replayed search seeds (30)")
    p.add_argument("--slots", type=int, default=2, help="replayed trials at once (2)")
    p.add_argument("--space", default=DEFAULT_SPACE, help="the search's --space")
    p.add_argument("--num-samples", type=int, default=8, help="sets TPE's start-up count")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    from progtune.analysis.load import load_experiment

    try:
        if opts.strategy not in strategy_names():
            raise LandscapeError(f"unknown strategy {opts.strategy!r}")
        land = load_landscape(opts.landscape)
        if opts.write_config:
            write_config(land, opts.seed, opts.write_config)
            return 0
        if not opts.experiment:
            raise LandscapeError("pass the experiment folder (or --write-config FILE)")
        trials, _ = load_experiment(opts.experiment)
    except (LandscapeError, ProgtuneError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = check_rows(trials, land, SnapTable(land))
    lines = [*scale_lines(trials, land), "", *run_lines(rows), ""]
    print("\n".join([*lines, *summary_lines(rows, trials, land, opts)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
