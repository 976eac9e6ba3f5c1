"""The report's target loss and every run's compute to reach it, recomputed from the curves.

One rule for the crossing: `progtune.results.to_target` (the search objective uses the same one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from progtune.errors import ResultsError
from progtune.results import saving, speedup, to_target
from progtune.search_state import objective as search_objective

TO_TARGET = ("flops_to_target", "tokens_to_target", "wall_s_to_target")
# Column types of trial_metrics' frame (nullable: a run may lack any of them).
_METRIC_DTYPES = {
    "seed": "Int64",
    "reached": "boolean",
    **dict.fromkeys(
        [
            "target_loss",
            *TO_TARGET,
            "final_eval_loss",
            "total_flops",
            "total_wall_s",
            "objective",
            "reference_flops_to_target",
            "saving",
            "speedup",
        ],
        "Float64",
    ),
    **dict.fromkeys(["experiment", "trial_id", "role", "status"], "string"),
}


@dataclass(frozen=True)
class Target:
    loss: float
    source: str  # where it came from, in words


def _number(value: object) -> float | None:
    if value is None or value is pd.NA:
        return None
    out = float(value)  # type: ignore[arg-type]
    return None if math.isnan(out) else out


def _fmt_losses(by_experiment: Mapping[str, float]) -> str:
    return ", ".join(f"{name}: {loss:.6g}" for name, loss in by_experiment.items())


def choose_target(trials: pd.DataFrame, target_loss: float | None = None) -> Target:
    """--target-loss; else the target the experiments were searched with; else the reference's.

    The stored `target_loss` is the search's --target-loss or its reference run's final held-out
    loss. Experiments with different targets need --target-loss to be ranked together.
    """
    if target_loss is not None:
        if not math.isfinite(target_loss) or target_loss <= 0:
            raise ResultsError(f"--target-loss must be a positive number, got {target_loss}")
        return Target(float(target_loss), "--target-loss")
    refs = trials[(trials["role"] == "reference") & (trials["status"] == "completed")]
    ref_loss = {
        str(r["experiment"]): loss
        for r in refs.to_dict("records")
        if (loss := _number(r["final_eval_loss"])) is not None
    }
    stored: dict[str, float] = {}
    for name, values in trials.groupby("experiment", sort=True)["target_loss"]:
        distinct = values.dropna().unique()
        if len(distinct) > 1:
            raise ResultsError(
                f"experiment {name} holds several target losses; pass --target-loss X"
            )
        if len(distinct) == 1:
            stored[str(name)] = float(distinct[0])
    found = stored or ref_loss
    if not found:
        has_ref = (trials["role"] == "reference").any()
        why = "its reference run did not complete" if has_ref else "there is no reference run"
        names = ", ".join(sorted(set(map(str, trials["experiment"]))))
        raise ResultsError(
            f"no target loss for {names}: {why} and no target is stored; pass --target-loss X"
        )
    if len(set(found.values())) > 1:
        raise ResultsError(
            f"the experiments used different target losses ({_fmt_losses(found)}); "
            "pass --target-loss X to rank them on one target"
        )
    loss = next(iter(found.values()))
    names = ", ".join(found)
    if found is stored and not any(v == loss for v in ref_loss.values()):
        return Target(loss, f"the target the search used (target_loss stored by {names})")
    return Target(loss, f"the reference run's final held-out loss ({names})")


def _curve_groups(curves: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    return {
        (str(e), str(t)): g.sort_values("step", kind="stable")
        for (e, t), g in curves.groupby(["experiment", "trial_id"], sort=False)
    }


def _last_loss(curve: pd.DataFrame | None) -> float | None:
    if curve is None:
        return None
    losses = curve["eval_loss"].dropna()
    return _number(losses.iloc[-1]) if len(losses) else None


def trial_metrics(trials: pd.DataFrame, curves: pd.DataFrame, target: Target) -> pd.DataFrame:
    """One row per run: compute to the target (FLOPs, tokens, wall s), saving, speed-up, objective.

    - `*_to_target`: `progtune.results.to_target` on the run's curve (null: never reached).
    - `saving` = 1 - C / C_ref and `speedup` = C_ref / C - 1, C_ref = the FLOPs to target of the
      reference run of the same experiment (the mean if it holds several); null without one.
    - `final_eval_loss`: from trials.parquet, else the curve's last held-out loss (failed runs).
    - `objective`: what the search minimises at this target: the stored value when the target is
      the one the search used, else `progtune.search_state.objective` (the surrogate for runs
      that never reach it) with the larger of the run's and its reference run's total FLOPs as
      the planned budget (planned budgets are not stored).
    """
    by_trial = _curve_groups(curves)
    refs = trials[trials["role"] == "reference"]
    ref_budget = refs.groupby("experiment")["total_flops"].max().to_dict()
    out = pd.DataFrame(
        [
            _metrics_row(r, by_trial, target, ref_budget.get(r["experiment"]))
            for r in trials.to_dict("records")
        ]
    )
    ref = out[out["role"] == "reference"].groupby("experiment")["flops_to_target"].mean()
    c_ref = out["experiment"].map(ref)
    out["reference_flops_to_target"] = c_ref
    out["saving"] = [saving(c, r) for c, r in zip(out["flops_to_target"], c_ref, strict=True)]
    out["speedup"] = [speedup(c, r) for c, r in zip(out["flops_to_target"], c_ref, strict=True)]
    return out.astype(_METRIC_DTYPES)


def _metrics_row(
    r: Mapping,
    by_trial: Mapping[tuple[str, str], pd.DataFrame],
    target: Target,
    reference_flops: object,
) -> dict:
    """One run's row of trial_metrics, before the columns that compare it with its reference."""
    key = (str(r["experiment"]), str(r["trial_id"]))
    curve = by_trial.get(key)
    reached = to_target(curve, target.loss) if curve is not None else dict.fromkeys(TO_TARGET)
    final = _number(r["final_eval_loss"])
    return {
        "experiment": key[0],
        "trial_id": key[1],
        "role": r["role"],
        "status": r["status"],
        "seed": r["seed"],
        "target_loss": target.loss,
        "reached": reached["flops_to_target"] is not None,
        **reached,
        "final_eval_loss": final if final is not None else _last_loss(curve),
        "total_flops": _number(r["total_flops"]),
        "total_wall_s": _number(r["total_wall_s"]),
        "objective": _objective(r, curve, target, reference_flops),
    }


def _objective(
    row: Mapping, curve: pd.DataFrame | None, target: Target, reference_flops: object
) -> float | None:
    stored = _number(row["objective"])
    if stored is not None and _number(row["target_loss"]) == target.loss:
        return stored
    if curve is None or row["status"] == "running":
        return None
    # The planned budgets are not in Parquet: the runs' total FLOPs stand in for them.
    own = _number(row["total_flops"]) or _number(curve["flops"].max()) or 0.0
    planned = max(own, _number(reference_flops) or 0.0)
    vocab = int(row["data.vocab_size"]) if _number(row["data.vocab_size"]) else 2
    return search_objective(curve.to_dict("records"), target.loss, planned, vocab)
