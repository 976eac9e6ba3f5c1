"""Rank runs and configurations (pooled over seeds) by compute to the target loss.

Rules (also stated in every report):
- Runs: those that reach the target first, by FLOPs to target; then those that never do, by
  final held-out loss (missing last). Equal keys share a rank; ties are listed by final loss,
  then experiment and trial id. The reference run is not ranked: it is what savings compare to.
- Configurations: runs with the same knobs apart from `seed` (runtime knobs ignored, as in
  `config_hash`). Those whose every seed reaches the target first, by mean FLOPs to target; then
  those where only some seeds do, by the share that do (more first), then the mean over those;
  then those where none does, by mean final loss. The interval is a seeded percentile bootstrap
  of the mean over the seeds that reached the target (2000 resamples, 95 %; none below 2 seeds).
"""

from __future__ import annotations

import hashlib
import json
import math
import typing
from collections.abc import Sequence

import numpy as np
import pandas as pd

from progtune.config import KNOB_TYPES

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_LEVEL = 0.95
BOOTSTRAP_SEED = 0

_LIST_KNOBS = {k for k, tp in KNOB_TYPES.items() if typing.get_origin(tp) is tuple}


def config_columns(trials: pd.DataFrame) -> list[str]:
    """Knob columns that define a configuration: every knob but `seed`, `runtime.*` and
    `data.cache_dir` (they do not change the maths); list knobs by their "_str" column."""
    out = []
    for knob in KNOB_TYPES:
        if knob == "seed" or knob.startswith("runtime.") or knob == "data.cache_dir":
            continue
        column = f"{knob}_str" if knob in _LIST_KNOBS else knob
        if column in trials.columns:
            out.append(column)
    return out


def varying_knobs(trials: pd.DataFrame) -> list[str]:
    """Configuration columns that take more than one value (null counts as a value)."""
    return [c for c in config_columns(trials) if trials[c].nunique(dropna=False) > 1]


def _plain(value: object) -> object:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def config_keys(trials: pd.DataFrame) -> pd.Series:
    """A short stable id per configuration (same knobs apart from the seed -> same key)."""
    columns = config_columns(trials)
    keys = [
        hashlib.sha256(
            json.dumps([_plain(row[c]) for c in columns], default=str).encode()
        ).hexdigest()[:10]
        for row in trials[columns].to_dict("records")
    ]
    return pd.Series(keys, index=trials.index, dtype="string", name="config_key")


def config_text(row: pd.Series | dict, knobs: Sequence[str]) -> str:
    """The knobs that vary in the report, as `name=value`; or the schedule when none varies."""
    if knobs:
        return " ".join(f"{k.removesuffix('_str')}={_short(row[k])}" for k in knobs)
    return (
        f"{_short(row['stages.unique_layers_str'])} @ {_short(row['stages.boundaries_str']) or '-'}"
        f", {row['sampling.strategy']}, {row['growth.operator']}, lr {_short(row['lr.peak'])}"
    )


def _short(value: object) -> str:
    value = _plain(value)
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _min_rank(keys: list[tuple]) -> list[int]:
    """1-based ranks of already sorted rows; rows with equal keys share the first one's rank."""
    ranks: list[int] = []
    for i, key in enumerate(keys):
        ranks.append(ranks[-1] if i and key == keys[i - 1] else i + 1)
    return ranks


def _num(value: object) -> float:
    value = _plain(value)
    return math.inf if value is None else float(value)  # type: ignore[arg-type]


def rank_trials(metrics: pd.DataFrame) -> pd.DataFrame:
    """Runs other than the reference, ordered by the rule above, with `rank` (1 = best)."""
    runs = metrics[metrics["role"] != "reference"].copy()

    def sort_key(r: dict) -> tuple:
        if r["reached"]:
            primary = (0, _num(r["flops_to_target"]))
        else:
            primary = (1, _num(r["final_eval_loss"]))
        return (primary, _num(r["final_eval_loss"]), str(r["experiment"]), str(r["trial_id"]))

    records = runs.to_dict("records")
    order = sorted(range(len(records)), key=lambda i: sort_key(records[i]))
    runs = runs.iloc[order].reset_index(drop=True)
    keys = [sort_key(records[i])[0] for i in order]
    runs.insert(0, "rank", pd.array(_min_rank(keys), dtype="Int64"))
    return runs


def bootstrap_interval(
    values: Sequence[float],
    seed: int = BOOTSTRAP_SEED,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = BOOTSTRAP_LEVEL,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean (seeded, so the same values give the same
    interval); None below two values."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def rank_configs(
    metrics: pd.DataFrame, knobs: Sequence[str] = (), seed: int = BOOTSTRAP_SEED
) -> pd.DataFrame:
    """Configurations pooled over their seeds: mean and bootstrap interval of FLOPs to target and
    saving, ranked by the rule above. `metrics` needs the knob columns and `config_key`."""
    runs = metrics[metrics["role"] != "reference"]
    out = pd.DataFrame(
        [
            _config_row(key, group, knobs, seed)
            for key, group in runs.groupby("config_key", sort=True)
        ]
    )
    if out.empty:
        return out
    records = out.to_dict("records")
    order = sorted(
        range(len(records)),
        key=lambda i: (
            _config_primary(records[i]),
            _num(records[i]["final_eval_loss_mean"]),
            records[i]["config_key"],
        ),
    )
    out = out.iloc[order].drop(columns="_share").reset_index(drop=True)
    ranks = _min_rank([_config_primary(records[i]) for i in order])
    out.insert(0, "rank", pd.array(ranks, dtype="Int64"))
    return _config_dtypes(out)


def _config_row(key: str, group: pd.DataFrame, knobs: Sequence[str], seed: int) -> dict:
    """One configuration's runs pooled: counts, seeds, means and bootstrap intervals."""
    reached = group[group["reached"].fillna(False).astype(bool)]
    flops = reached["flops_to_target"].astype("float64").to_numpy()
    savings = reached["saving"].astype("float64").to_numpy()
    flops_ci = bootstrap_interval(flops, seed)
    all_savings = bool(len(savings)) and not np.isnan(savings).any()
    saving_ci = bootstrap_interval(savings, seed) if all_savings else None
    return {
        "config_key": key,
        "config": (
            group["config"].iloc[0]
            if "config" in group.columns
            else config_text(group.iloc[0], knobs)
        ),
        "runs": len(group),
        "reached": len(reached),
        "seeds": ",".join(_short(s) for s in sorted(group["seed"].dropna())),
        "trial_ids": ",".join(group["trial_id"].astype(str)),
        "flops_to_target_mean": flops.mean() if len(flops) else None,
        "flops_to_target_lo": flops_ci[0] if flops_ci else None,
        "flops_to_target_hi": flops_ci[1] if flops_ci else None,
        "saving_mean": savings.mean() if all_savings else None,
        "saving_lo": saving_ci[0] if saving_ci else None,
        "saving_hi": saving_ci[1] if saving_ci else None,
        "wall_s_to_target_mean": (
            reached["wall_s_to_target"].astype("float64").mean() if len(reached) else None
        ),
        "final_eval_loss_mean": group["final_eval_loss"].astype("float64").mean(),
        "_share": len(reached) / len(group),
    }


def _config_primary(r: dict) -> tuple:
    """Rank key: every seed reached, then some (larger share first), then none."""
    if r["_share"] == 1.0:
        return (0, 0.0, _num(r["flops_to_target_mean"]))
    if r["_share"] > 0:
        return (1, -r["_share"], _num(r["flops_to_target_mean"]))
    return (2, 0.0, _num(r["final_eval_loss_mean"]))


def _config_dtypes(out: pd.DataFrame) -> pd.DataFrame:
    for column in out.columns:
        if column.endswith(("_mean", "_lo", "_hi")):
            out[column] = out[column].astype("Float64")
    for column in ("runs", "reached"):
        out[column] = out[column].astype("Int64")
    for column in ("config_key", "config", "seeds", "trial_ids"):
        out[column] = out[column].astype("string")
    return out
