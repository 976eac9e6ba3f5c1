"""The report's figures as PNG bytes (matplotlib's Figure API with Agg: no display, no pyplot).

Each function returns the PNG of one figure; nothing is written here (the report writes files
only once every figure exists).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _curve(curves: pd.DataFrame, experiment: str, trial_id: str) -> pd.DataFrame:
    rows = curves[(curves["experiment"] == experiment) & (curves["trial_id"] == trial_id)]
    return rows.sort_values("step", kind="stable")


def _label(experiment: str, trial_id: str, several: bool) -> str:
    return f"{experiment}/{trial_id}" if several else trial_id


def loss_curves(
    curves: pd.DataFrame,
    runs: Sequence[tuple[str, str]],
    references: Sequence[tuple[str, str]],
    target: float,
    x: str,
    xlabel: str,
) -> bytes:
    """Held-out loss against `x` (cumulative FLOPs or wall seconds) for `runs` (best first) and
    the reference runs (black, dashed), with the target as a horizontal line."""
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    several = len({e for e, _ in [*runs, *references]}) > 1
    for experiment, trial_id in references:
        c = _curve(curves, experiment, trial_id)
        ax.plot(
            c[x].astype("float64"),
            c["eval_loss"].astype("float64"),
            "k--",
            marker=".",
            label=_label(experiment, trial_id, several)
            if trial_id == "reference"
            else f"reference {_label(experiment, trial_id, several)}",
        )
    for rank, (experiment, trial_id) in enumerate(runs, 1):
        c = _curve(curves, experiment, trial_id)
        ax.plot(
            c[x].astype("float64"),
            c["eval_loss"].astype("float64"),
            marker=".",
            label=f"#{rank} {_label(experiment, trial_id, several)}",
        )
    ax.axhline(target, color="tab:red", linewidth=1, linestyle=":", label=f"target {target:.5g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("held-out loss (full depth)")
    losses = curves["eval_loss"].astype("float64").to_numpy()
    losses = losses[np.isfinite(losses)]
    if len(losses):  # the first evaluations are far above: zoom on the part that matters
        top = max(target, float(np.quantile(losses, 0.9)))
        bottom = min(target, float(losses.min()))
        pad = 0.05 * max(top - bottom, 1e-9)
        ax.set_ylim(bottom - pad, top + pad)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def depth_schedule(curves: pd.DataFrame, runs: Sequence[tuple[str, str]]) -> bytes:
    """Unique blocks (top) and mean executed depth (bottom) over training tokens for `runs`,
    with the growth points (where the stage changes) as vertical lines."""
    fig = Figure(figsize=(7.5, 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    several = len({e for e, _ in runs}) > 1
    for rank, (experiment, trial_id) in enumerate(runs, 1):
        c = _curve(curves, experiment, trial_id)
        tokens = c["tokens"].astype("float64").to_numpy()
        color = f"C{(rank - 1) % 10}"
        label = f"#{rank} {_label(experiment, trial_id, several)}"
        # Each row describes the interval that ends at it: draw as steps ending at the row.
        top.plot(
            tokens,
            c["unique_layers"].astype("float64"),
            color=color,
            label=label,
            drawstyle="steps-pre",
        )
        bottom.plot(
            tokens,
            c["mean_depth"].astype("float64"),
            color=color,
            label=label,
            drawstyle="steps-pre",
            marker=".",
        )
        stage = c["stage"].astype("float64").to_numpy()
        for i in np.flatnonzero(np.diff(stage) > 0):  # growth at the last row of a stage
            for ax in (top, bottom):
                ax.axvline(tokens[i], color=color, linestyle=":", linewidth=1)
    top.set_ylabel("unique blocks")
    bottom.set_ylabel("mean executed depth")
    bottom.set_xlabel("training tokens (dotted: growth points)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.legend(fontsize=8)
    return _png(fig)


def objective_vs_knob(runs: pd.DataFrame, knob: str, target: float) -> bytes:
    """The objective of every run (log scale) against one knob; open marks: never reached."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    runs = runs[np.isfinite(runs["objective"].astype("float64").to_numpy())]
    values = runs[knob]
    objective = runs["objective"].astype("float64").to_numpy()
    reached = runs["reached"].fillna(False).astype(bool).to_numpy()
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if numeric:
        x = values.astype("float64").to_numpy()
        finite = x[np.isfinite(x)]
        if len(finite) and finite.min() > 0 and finite.max() / finite.min() > 20:
            ax.set_xscale("log")
    else:
        labels = values.astype("string").fillna("<null>")
        categories = sorted(labels.unique())
        x = labels.map({c: i for i, c in enumerate(categories)}).to_numpy(
            dtype="float64", copy=True
        )
        for i in range(len(categories)):  # spread the points of one value a little apart
            same = np.flatnonzero(x == i)
            if len(same) > 1:
                x[same] += np.linspace(-0.15, 0.15, len(same))
        ax.set_xticks(range(len(categories)), categories, rotation=20, fontsize=8)
        ax.set_xlim(-0.5, len(categories) - 0.5)
    ax.scatter(x[reached], objective[reached], label="reached the target")
    ax.scatter(
        x[~reached],
        objective[~reached],
        facecolors="none",
        edgecolors="tab:red",
        label="never reached (surrogate)",
    )
    if np.isfinite(objective).any() and (objective[np.isfinite(objective)] > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel(knob.removesuffix("_str"))
    ax.set_ylabel(f"objective: FLOPs to loss {target:.5g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)
