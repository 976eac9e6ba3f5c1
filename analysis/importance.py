"""Knob importance: how much of the spread of log10(objective) each varying knob explains.

Method (stated in every report): over the runs other than the reference that have an objective
(FLOPs to target, or the search's surrogate when never reached), for each knob that takes more
than one value, eta-squared = between-group sum of squares / total sum of squares of
log10(objective). Groups are the knob's values for text, boolean and list knobs and for numeric
knobs with at most 4 distinct values; other numeric knobs are cut into min(4, n // 2) quantile
bins. Numeric knobs also get Spearman's rank correlation with the objective (its sign says
which way is cheaper). Categorical knobs that split the runs identically (they always changed
together, e.g. across experiments of different presets) share one row. eta-squared needs two runs
per group on average (with one run per group it is always 1); it is descriptive, biased upward
with few runs per group.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

MAX_GROUPS = 4
_IMPORTANCE_DTYPES = {
    "knob": "string",
    "kind": "string",
    "runs": "Int64",
    "values": "Int64",
    "eta_squared": "Float64",
    "spearman_rho": "Float64",
}

METHOD = (
    "eta-squared: the share of the variance of log10(objective) between the knob's values "
    f"(numeric knobs with more than {MAX_GROUPS} values: min({MAX_GROUPS}, n/2) quantile bins); "
    "shown only with at least two runs per group on average; "
    "Spearman's rho for numeric knobs (negative: larger values need less compute)"
)


def eta_squared(y: np.ndarray, groups: np.ndarray) -> float | None:
    """Between-group share of the total sum of squares of y; None when y does not vary or there
    are fewer than two runs per group on average (with one run per group it is always 1)."""
    total = float(((y - y.mean()) ** 2).sum())
    k = len(np.unique(groups))
    if total <= 0 or k < 2 or len(y) < 2 * k:
        return None
    between = 0.0
    for g in np.unique(groups):
        part = y[groups == g]
        between += len(part) * (part.mean() - y.mean()) ** 2
    return between / total


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rho: Pearson's correlation of the average ranks (no scipy needed)."""
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def knob_importance(runs: pd.DataFrame, knobs: Sequence[str]) -> pd.DataFrame:
    """One row per knob that varies among `runs` (which need `objective` and the knob columns):
    knob, kind, runs, values, eta_squared, spearman_rho; most important first."""
    use = runs[runs["role"] != "reference"]
    objective = use["objective"].astype("float64")
    use = use[np.isfinite(objective) & (objective > 0)]
    y = np.log10(use["objective"].astype("float64").to_numpy())
    rows: list[dict] = []
    for knob in knobs:
        column = use[knob]
        if column.nunique(dropna=False) < 2:
            continue
        numeric, groups, distinct, rho = _knob_groups(column, y)
        partition = tuple(pd.factorize(pd.Series(groups), use_na_sentinel=False)[0])
        twin = next((r for r in rows if r["_partition"] == partition), None)
        if twin is not None and not numeric and twin["kind"] == "categorical":
            twin["knob"] += f", {knob.removesuffix('_str')}"  # they move together: one row
            continue
        rows.append(
            {
                "_partition": partition,
                "knob": knob.removesuffix("_str"),
                "kind": "numeric" if numeric else "categorical",
                "runs": len(use),
                "values": int(distinct),
                "eta_squared": eta_squared(y, groups),
                "spearman_rho": rho,
            }
        )
    # The listed columns leave the "_partition" helper out.
    out = pd.DataFrame(rows, columns=list(_IMPORTANCE_DTYPES)).astype(_IMPORTANCE_DTYPES)
    order = out.assign(_rho=out["spearman_rho"].abs()).sort_values(
        ["eta_squared", "_rho", "knob"], ascending=[False, False, True], na_position="last"
    )
    return out.loc[order.index].reset_index(drop=True)


def _knob_groups(column: pd.Series, y: np.ndarray) -> tuple[bool, np.ndarray, int, float | None]:
    """(numeric, group of each run, distinct values, Spearman rho or None) of one knob's column:
    numeric knobs with more than MAX_GROUPS values are cut into quantile bins."""
    if not (_is_numeric(column) and column.notna().all()):
        groups = column.astype("string").fillna("<null>").to_numpy(dtype=object)
        return False, groups, column.nunique(dropna=False), None
    x = column.astype("float64").to_numpy()
    distinct = len(np.unique(x))
    if distinct <= MAX_GROUPS:
        groups = x
    else:
        bins = min(MAX_GROUPS, len(x) // 2)
        groups = (
            pd.qcut(x, bins, labels=False, duplicates="drop").astype("float64")
            if bins >= 2
            else np.zeros(len(x))
        )
    return True, groups, distinct, spearman(x, y)
