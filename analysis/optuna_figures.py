"""Optuna's own figures of a search (history, parallel coordinates, slices, PED-ANOVA importances).

The study is read from the experiment's `optuna.journal` when there is exactly one experiment and
its folder holds one; otherwise (several experiments, no journal, a URI) an in-memory study is
built from the report's rows: one COMPLETE trial per run with an objective, every varying knob a
parameter (numbers as float or int ranges, everything else categorical by its text).
"""

from __future__ import annotations

import io
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

JOURNAL_FILE = "optuna.journal"
TARGET_NAME = "log10 objective (FLOPs to target)"
DPI = 110
# (file name, caption, optuna.visualization.matplotlib function name)
FIGURES = (
    ("history.png", "Optimisation history: objective per trial and the best so far", "history"),
    (
        "parallel_coordinates.png",
        "Parallel coordinates: every trial's knobs, coloured by its objective",
        "parallel",
    ),
    ("slice.png", "Slice plots: objective against each knob, coloured by trial number", "slice"),
    (
        "importances.png",
        "Knob importances from Optuna's PED-ANOVA (optuna.importance; which knobs set the best "
        "trials apart, no direction)",
        "importances",
    ),
)


def _quiet_optuna() -> Any:
    """optuna, with its INFO lines (a study created, ...) off: the report's stderr stays clean."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


def study_from_journal(folder: str, name: str) -> Any | None:
    """The search's study from `folder/optuna.journal` (read from a private copy: no lock files
    or writes in the results folder), or None when there is none."""
    optuna = _quiet_optuna()

    path = os.path.join(folder, JOURNAL_FILE)
    if "://" in folder or not os.path.isfile(path):
        return None
    with tempfile.TemporaryDirectory(prefix="progtune-journal-") as tmp:
        copy = os.path.join(tmp, JOURNAL_FILE)
        shutil.copyfile(path, copy)
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(copy))
        names = optuna.get_all_study_names(storage)
        if not names:
            return None
        study = optuna.load_study(study_name=name if name in names else names[0], storage=storage)
        # Copy into memory so the study outlives the temporary folder.
        memory = optuna.create_study(direction=study.direction)
        memory.add_trials(study.trials)
        return memory


def _distribution(values: pd.Series) -> Any:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    present = values.dropna()
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return CategoricalDistribution(sorted({str(v) for v in present}))
    low, high = float(present.min()), float(present.max())
    if pd.api.types.is_integer_dtype(values):
        return IntDistribution(int(low), int(high))
    return FloatDistribution(low, high, log=low > 0 and high / low > 20)


def study_from_rows(runs: pd.DataFrame, knobs: Sequence[str]) -> Any:
    """An in-memory study of `runs` (the report's metrics rows): objective as the value."""
    optuna = _quiet_optuna()

    runs = runs[np.isfinite(runs["objective"].astype("float64").to_numpy(na_value=np.nan))]
    dists = {k.removesuffix("_str"): (k, _distribution(runs[k])) for k in knobs}
    study = optuna.create_study(direction="minimize")
    for row in runs.to_dict("records"):
        params, used = {}, {}
        for name, (column, dist) in dists.items():
            value = row[column]
            if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
                continue  # a knob this run's branch of the space does not have
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                value = str(value)
            elif isinstance(dist, optuna.distributions.IntDistribution):
                value = int(value)
            else:
                value = float(value)
            params[name], used[name] = value, dist
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=used, value=float(row["objective"])
            )
        )
    return study


def _log10_objective(trial: Any) -> float:
    return math.log10(trial.value) if trial.value > 0 else math.nan


def _plotter(kind: str) -> Callable[[Any], Any]:
    """One of Optuna's matplotlib figures, drawn on log10(objective): FLOPs span decades."""
    import optuna
    from optuna.visualization import matplotlib as vis

    if kind == "history":  # raw values on a log axis: Optuna's best-so-far line stays
        return _history_log_axis
    plot = {
        "parallel": vis.plot_parallel_coordinate,
        "slice": vis.plot_slice,
        "importances": vis.plot_param_importances,
    }[kind]
    extra = (
        {"evaluator": optuna.importance.PedAnovaImportanceEvaluator()}
        if kind == "importances"
        else {}
    )
    return lambda study: plot(study, target=_log10_objective, target_name=TARGET_NAME, **extra)


def _history_log_axis(study: Any) -> Any:
    from optuna.visualization import matplotlib as vis

    ax = vis.plot_optimization_history(study)
    ax.set_yscale("log")
    ax.set_ylabel("objective: FLOPs to target (log)")
    return ax


def optuna_figures(study: Any) -> tuple[list[tuple[str, str, bytes]], list[str]]:
    """(file name, caption, PNG) of each Optuna figure the study can draw, and one line per
    figure it cannot (too few trials, no parameter), saying why."""
    import matplotlib

    matplotlib.use("Agg")  # Optuna draws with pyplot: never a window
    from matplotlib import pyplot as plt

    _quiet_optuna()
    figures, skipped = [], []
    for name, caption, kind in FIGURES:
        # Optuna sets pyplot's "ggplot" style globally: keep it to its own figures.
        with matplotlib.rc_context(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning of optuna's matplotlib module
            try:
                ax = _plotter(kind)(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                skipped.append(f"{name}: {exc}")
                continue
            fig = np.ravel(ax)[0].figure
            buffer = io.BytesIO()
            fig.savefig(
                buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None}
            )
            plt.close(fig)
        figures.append((name, caption, buffer.getvalue()))
    return figures, skipped
