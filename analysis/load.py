"""Load one or several experiments (folders or URIs) into pandas with nullable dtypes."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from progtune.errors import ResultsError
from progtune.results import read_curves, read_trials

TRIALS_FILE, CURVES_FILE = "trials.parquet", "curves.parquet"


@dataclass(frozen=True)
class Results:
    """Trials and curves of the loaded experiments; `experiment` tells them apart."""

    trials: pd.DataFrame  # one row per run, dtypes of progtune.results.read_trials
    curves: pd.DataFrame  # one row per evaluation per run, dtypes of read_curves
    sources: dict[str, str]  # experiment -> the folder or URI it was read from


def experiment_folder(source: str | os.PathLike) -> str:
    """`STORAGE/NAME`, `STORAGE/NAME/trials.parquet` or a URI -> the experiment folder."""
    text = os.fspath(source)
    is_uri = "://" in text
    text = text.rstrip("/") or "/"
    if text.endswith(f"/{TRIALS_FILE}") or text == TRIALS_FILE:
        text = text[: -len(TRIALS_FILE)].rstrip("/") or "."
    return text if is_uri else os.path.abspath(text)


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if "://" in folder else os.path.join(folder, name)


def _missing_hint(folder: str) -> None:
    """A local folder without trials.parquet: name the experiments below it, or say it is empty."""
    if "://" in folder:
        return
    path = Path(folder)
    if not path.exists():
        raise ResultsError(
            f"no results folder at {folder}; pass an experiment folder STORAGE/NAME "
            "written by `progtune search`"
        )
    if (path / TRIALS_FILE).exists():
        return
    below = sorted(p.parent.name for p in path.glob(f"*/{TRIALS_FILE}"))
    if below:
        shown = " ".join(str(path / name) for name in below[:5])
        raise ResultsError(
            f"{folder} holds experiments, not one: pass their folders ({shown}"
            f"{' ...' if len(below) > 5 else ''})"
        )
    raise ResultsError(
        f"no results in {folder} (no {TRIALS_FILE}); run `progtune search` first or pass the "
        "experiment folder STORAGE/NAME that holds them"
    )


def load_experiment(source: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One experiment folder (or URI) -> (trials, curves); ResultsError names what is wrong."""
    folder = experiment_folder(source)
    _missing_hint(folder)
    trials = read_trials(_join(folder, TRIALS_FILE))
    if trials.empty:
        raise ResultsError(
            f"{_join(folder, TRIALS_FILE)} holds no runs; wait for the search to finish a trial"
        )
    curves = read_curves(_join(folder, CURVES_FILE))
    return trials, curves


def load_experiments(sources: Iterable[str | os.PathLike]) -> Results:
    """Several experiment folders -> one Results; the same folder given twice is read once.

    Two different folders holding experiments of the same name keep them apart by relabelling
    the later one's `experiment` as "NAME (FOLDER)".
    """
    trial_frames, curve_frames, where = [], [], {}
    seen: set[str] = set()
    for source in sources:
        folder = experiment_folder(source)
        if folder in seen:
            continue
        seen.add(folder)
        trials, curves = load_experiment(folder)
        for name in trials["experiment"].dropna().unique():
            label = name if name not in where else f"{name} ({folder})"
            if label != name:
                trials.loc[trials["experiment"] == name, "experiment"] = label
                curves.loc[curves["experiment"] == name, "experiment"] = label
            where[label] = folder
        trial_frames.append(trials)
        curve_frames.append(curves)
    if not trial_frames:
        raise ResultsError("no results given; pass one or more experiment folders STORAGE/NAME")
    trials = pd.concat(trial_frames, ignore_index=True)
    curves = pd.concat(curve_frames, ignore_index=True)
    # Curve rows of runs that trials.parquet does not list (a write in between) are ignored.
    known = pd.MultiIndex.from_frame(trials[["experiment", "trial_id"]])
    keep = pd.MultiIndex.from_frame(curves[["experiment", "trial_id"]]).isin(known)
    curves = curves[keep].reset_index(drop=True)
    return Results(trials=trials, curves=curves, sources=where)
