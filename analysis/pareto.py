"""Total FLOPs vs final held-out loss: the Pareto front of the runs and their saving at equal loss.

Two figures of "what scratch would have needed for this run's final loss" per run:
- crossing (`saving_equal_loss`): the FLOPs at which the reference run's own curve first reaches
  the run's final loss (linear interpolation between evaluations, `progtune.results.to_target`).
  Optimistic for the run: the reference's loss part-way through its schedule is worse than that
  of a scratch run trained (and annealed) for that budget.
- budgets (`saving_equal_loss_budgets`): scratch runs trained to the end
  at several budgets (`progtune confirm --scratch-budgets`; the reference counts as one) give
  final (total FLOPs, loss) points; the scratch FLOPs at the run's final loss are interpolated
  linearly in log FLOPs between the two budgets whose losses bracket it. None outside them.
  It never credits a run with an unannealed scratch loss; the straight line between two budgets
  is an approximation of scratch's curve (budgets far apart can overstate scratch's FLOPs).
saving = 1 - run's total FLOPs / scratch FLOPs at equal final loss.
"""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from progtune.results import saving, to_target

from .ranking import config_keys

BUDGET_KNOB = "budget.tokens"
SCRATCH_ROLES = ("reference", "confirm")
EQUAL_LOSS_COLUMNS = ("saving_equal_loss", "saving_equal_loss_budgets")


def _finite(value: object) -> float | None:
    if value is None or value is pd.NA:
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


def _flag(mask: pd.Series) -> np.ndarray:
    return mask.fillna(False).to_numpy(dtype=bool)


def scratch_keys(trials: pd.DataFrame) -> pd.Series:
    """Per run: its configuration without the budget (scratch runs at several budgets share it)."""
    return config_keys(trials.drop(columns=[BUDGET_KNOB], errors="ignore"))


def scratch_mask(trials: pd.DataFrame, metrics: pd.DataFrame) -> np.ndarray:
    """Per row of `metrics`: a scratch run (the reference, or a confirm run of the reference's
    configuration at another budget) of an experiment that has a reference run."""
    keys = scratch_keys(trials).to_numpy()
    out = np.zeros(len(metrics), dtype=bool)
    for experiment in metrics["experiment"].dropna().unique():
        same = _flag(metrics["experiment"] == experiment)
        refs = same & _flag(metrics["role"] == "reference")
        out |= same & np.isin(keys, keys[refs]) & _flag(metrics["role"].isin(SCRATCH_ROLES))
    return out


def scratch_points(trials: pd.DataFrame, metrics: pd.DataFrame) -> dict[str, np.ndarray]:
    """experiment -> (n, 2) array of (total FLOPs, final loss) of its completed scratch runs at
    their budgets, by FLOPs."""
    scratch = scratch_mask(trials, metrics) & _flag(metrics["status"] == "completed")
    out: dict[str, list[tuple[float, float]]] = {}
    for r in metrics[scratch].to_dict("records"):
        if (f := _finite(r["total_flops"])) and (loss := _finite(r["final_eval_loss"])):
            out.setdefault(str(r["experiment"]), []).append((f, loss))
    return {e: np.array(sorted(p), dtype="float64").reshape(-1, 2) for e, p in out.items()}


def flops_at_loss(points: np.ndarray, loss: float) -> float | None:
    """Scratch FLOPs at `loss` between the two budgets that bracket it (log-linear), or None."""
    for (f0, l0), (f1, l1) in itertools.pairwise(points):
        if min(l0, l1) <= loss <= max(l0, l1) and l0 != l1:
            t = (loss - l0) / (l1 - l0)
            return float(10 ** (math.log10(f0) + t * (math.log10(f1) - math.log10(f0))))
    return None


def equal_loss_savings(
    trials: pd.DataFrame, curves: pd.DataFrame, metrics: pd.DataFrame
) -> pd.DataFrame:
    """The two EQUAL_LOSS_COLUMNS for every row of `metrics` (null where undefined)."""
    budgets = scratch_points(trials, metrics)
    scratch = scratch_mask(trials, metrics)
    ref_curves = {
        (r["experiment"], r["trial_id"]): curves[
            (curves["experiment"] == r["experiment"]) & (curves["trial_id"] == r["trial_id"])
        ].sort_values("step", kind="stable")
        for r in metrics[metrics["role"] == "reference"].to_dict("records")
    }
    crossing, budgets_saving = [], []
    for r, is_scratch in zip(metrics.to_dict("records"), scratch, strict=True):
        loss, total = _finite(r["final_eval_loss"]), _finite(r["total_flops"])
        cross = budget = None
        if loss is not None and total is not None and r["role"] != "reference":
            for (experiment, _), curve in ref_curves.items():
                if experiment == r["experiment"] and not curve.empty:
                    cross = saving(total, to_target(curve, loss)["flops_to_target"])
            points = budgets.get(str(r["experiment"]))
            if points is not None and len(points) >= 2 and not is_scratch:  # not vs itself
                budget = saving(total, flops_at_loss(points, loss))
        crossing.append(cross)
        budgets_saving.append(budget)
    return pd.DataFrame(
        {
            EQUAL_LOSS_COLUMNS[0]: pd.array(crossing, dtype="Float64"),
            EQUAL_LOSS_COLUMNS[1]: pd.array(budgets_saving, dtype="Float64"),
        },
        index=metrics.index,
    )


def pareto_mask(flops: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """True for the runs no other run beats on both total FLOPs and final loss."""
    keep = np.ones(len(flops), dtype=bool)
    for i in range(len(flops)):
        better = (flops <= flops[i]) & (loss <= loss[i]) & ((flops < flops[i]) | (loss < loss[i]))
        keep[i] = not better.any()
    return keep


def pareto_figure(
    runs: pd.DataFrame, reference_curves: list[pd.DataFrame], budgets: list[np.ndarray]
) -> bytes:
    """All runs (total FLOPs, final loss), their Pareto front, the reference's loss-vs-FLOPs
    curve (dashed) and the scratch runs at their budgets (squares)."""
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    flops = runs["total_flops"].astype("float64").to_numpy(na_value=np.nan)
    loss = runs["final_eval_loss"].astype("float64").to_numpy(na_value=np.nan)
    ok = np.isfinite(flops) & np.isfinite(loss)
    flops, loss = flops[ok], loss[ok]
    for i, curve in enumerate(reference_curves):
        ax.plot(
            curve["flops"].astype("float64"),
            curve["eval_loss"].astype("float64"),
            "k--",
            linewidth=1,
            label="reference run's curve" if i == 0 else None,
        )
    for i, points in enumerate(budgets):
        if len(points) >= 2:
            ax.plot(*points.T, "ks-", label="scratch at its budgets (final)" if i == 0 else None)
    ax.scatter(flops, loss, color="tab:gray", alpha=0.6, label="runs (total, final)")
    front = pareto_mask(flops, loss)
    order = np.argsort(flops[front])
    ax.plot(
        flops[front][order],
        loss[front][order],
        "o-",
        color="tab:red",
        drawstyle="steps-post",
        label="Pareto front",
    )
    if len(flops) and flops.min() > 0:
        ax.set_xscale("log")
    losses = np.concatenate([loss, *[p[:, 1] for p in budgets if len(p)]])
    if len(losses):
        ax.set_ylim(losses.min() - 0.1 * np.ptp(losses) - 1e-3, losses.max() + 0.3 * np.ptp(losses))
    ax.set_xlabel("total training FLOPs")
    ax.set_ylabel("final held-out loss (full depth)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return buffer.getvalue()
