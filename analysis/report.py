"""Build a report from experiments (all computation first) and write it atomically.

`build_report` loads, recomputes compute-to-target, ranks and scores knobs; `terminal_text`
(from report_content) prints the ranking; `write_report` renders figures, Markdown, HTML and
Parquet in memory and only then writes them to a temporary folder that is renamed to --out, so a
failure leaves nothing half-written.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from progtune.errors import ResultsError

from .compute_to_target import Target, choose_target, trial_metrics
from .importance import knob_importance
from .load import load_experiments
from .pareto import equal_loss_savings
from .ranking import (
    config_keys,
    config_text,
    rank_configs,
    rank_trials,
    varying_knobs,
)
from .render import html_page, markdown
from .report_content import content, terminal_text
from .report_data import Report, run_label

__all__ = ["Report", "build_report", "check_out_dir", "terminal_text", "write_report"]

REPORT_FILES = ("report.html", "report.md", "ranking.parquet", "configs.parquet")


# ---------------------------------------------------------------------------- build
def build_report(sources: Iterable[str | os.PathLike], target_loss: float | None = None) -> Report:
    results = load_experiments(sources)
    target = choose_target(results.trials, target_loss)
    metrics = trial_metrics(results.trials, results.curves, target)
    trials = results.trials.reset_index(drop=True)
    runs_mask = trials["role"] != "reference"
    knobs = varying_knobs(trials[runs_mask])
    metrics["config_key"] = config_keys(trials)
    metrics["config"] = pd.array(
        [config_text(row, knobs) for row in trials.to_dict("records")], dtype="string"
    )
    for column in dict.fromkeys([*knobs, "stages.unique_layers_str", "stages.boundaries_str"]):
        metrics[column] = trials[column]
    metrics = pd.concat([metrics, equal_loss_savings(trials, results.curves, metrics)], axis=1)
    ranking = rank_trials(metrics)
    configs = rank_configs(metrics, knobs)
    importance = knob_importance(metrics[runs_mask.to_numpy()], knobs)
    report = Report(results, target, metrics, ranking, configs, importance, knobs)
    report.notes = _notes(report)
    return report


def _notes(report: Report) -> list[str]:
    notes, ranking, target = [], report.ranking, report.target.loss
    if ranking.empty:
        notes.append("No runs besides the reference run: nothing to rank.")
    elif len(ranking) == 1:
        notes.append("Only one run besides the reference run: no ranking comparison possible.")
    if not ranking.empty and not ranking["reached"].fillna(False).any():
        best = ranking.iloc[0]
        loss = best["final_eval_loss"]
        notes.append(
            f"No run reaches the target loss {target:.6g}"
            + (
                f" (lowest final loss {loss:.6g}, run {run_label(report, best)})"
                if pd.notna(loss)
                else ""
            )
            + ": every run is ranked by its final loss."
        )
    for experiment in report.results.sources:
        refs = report.references[report.references["experiment"] == experiment]
        if refs.empty:
            notes.append(f"Experiment {experiment} has no reference run: no saving or speed-up.")
        elif not refs["reached"].fillna(False).any():
            notes.append(
                f"The reference run of {experiment} does not reach the target: "
                "no saving or speed-up."
            )
    bad = ranking[~ranking["status"].isin(["completed"])] if not ranking.empty else ranking
    for status, count in bad["status"].value_counts().items():
        notes.append(f"{count} run(s) {status}; ranked on the part of their curve that exists.")
    if len(ranking) > 1 and not report.multi_seed:
        notes.append(
            "Each configuration ran with one seed: no intervals; re-run the best ones on more "
            "seeds to rank them on means (`progtune confirm`)."
        )
    if len(ranking) > 1 and report.importance.empty:
        notes.append("No knob varies across the runs: no knob importance.")
    return notes


def _figures(report: Report, top: int) -> list[tuple[str, str, bytes]]:
    """(file name, caption, PNG) of every figure."""
    from . import plots  # matplotlib: only when a report is written

    best = [
        (str(r["experiment"]), str(r["trial_id"]))
        for r in report.ranking.head(top).to_dict("records")
    ]
    refs = [
        (str(r["experiment"]), str(r["trial_id"])) for r in report.references.to_dict("records")
    ]
    curves, target = report.results.curves, report.target.loss
    figures = [
        (
            "loss_vs_flops.png",
            f"Held-out loss vs cumulative training FLOPs: the best {len(best)} run(s), the "
            f"reference (dashed) and the target {target:.4g} (dotted)",
            plots.loss_curves(curves, best, refs, target, "flops", "cumulative training FLOPs"),
        ),
        (
            "loss_vs_wall.png",
            "Held-out loss vs training wall seconds (evaluation and checkpoints excluded)",
            plots.loss_curves(curves, best, refs, target, "wall_s", "training wall seconds"),
        ),
    ]
    if best:
        figures.append(
            (
                "depth_schedule.png",
                f"Depth schedule of the best {len(best)} run(s): unique blocks and mean executed "
                "depth over training tokens; dotted lines: growth points",
                plots.depth_schedule(curves, best),
            )
        )
    runs = report.metrics[report.metrics["role"] != "reference"]
    runs = runs[runs["objective"].notna()]
    for knob in report.knobs:
        if runs.empty:
            break
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", knob.removesuffix("_str"))
        figures.append(
            (
                f"objective_vs_{name}.png",
                "Objective (FLOPs to target; surrogate when never reached) vs "
                + knob.removesuffix("_str"),
                plots.objective_vs_knob(runs, knob, target),
            )
        )
    return figures


def _search_figures(report: Report) -> tuple[list[tuple[str, str, bytes]], list[str]]:
    """pareto.png and Optuna's figures (from the search's study, or one built from the rows),
    and a note for each Optuna figure that cannot be drawn."""
    from . import optuna_figures, pareto

    runs = report.metrics[report.metrics["role"] != "reference"]
    references = report.references
    curves = report.results.curves
    reference_curves = [
        curves[
            (curves["experiment"] == r["experiment"]) & (curves["trial_id"] == r["trial_id"])
        ].sort_values("step", kind="stable")
        for r in references.to_dict("records")
    ]
    budgets = list(pareto.scratch_points(report.results.trials, report.metrics).values())
    figures = [
        (
            "pareto.png",
            "Total training FLOPs vs final held-out loss of every run, the Pareto front (red), "
            "the reference run's loss-vs-FLOPs curve (dashed) and scratch runs trained to the end "
            "at several budgets (squares, when `progtune confirm --scratch-budgets` ran)",
            pareto.pareto_figure(runs, reference_curves, budgets),
        )
    ]
    (name, folder), *others = report.results.sources.items()
    study = None if others else optuna_figures.study_from_journal(folder, name)
    if study is None:
        study = optuna_figures.study_from_rows(runs, report.knobs)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    if len(done) < 2:
        return figures, ["Fewer than two finished search trials: no Optuna figures."]
    drawn, skipped = optuna_figures.optuna_figures(study)
    return figures + drawn, [f"Optuna figure not drawn: {why}" for why in skipped]


# ---------------------------------------------------------------------------- write
def check_out_dir(out: str | os.PathLike) -> Path:
    """--out must be a local folder that is new, empty or a previous report (replaced whole):
    never a folder with files a report does not write."""
    text = os.fspath(out)
    if "://" in text:
        raise ResultsError(f"--out {text}: reports are written to a local folder; pass a path")
    path = Path(text).absolute()
    if path.exists() and not path.is_dir():
        raise ResultsError(f"--out {text} is a file; pass a folder for the report")
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    previous_report = {"report.md", "report.html"} <= names
    foreign = sorted(n for n in names if not (previous_report and _report_file(n)))
    if foreign:
        raise ResultsError(
            f"--out {text} holds other files ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); pass a new or empty folder"
        )
    return path


def _report_file(name: str) -> bool:
    return name in REPORT_FILES or (name.endswith(".png") and not name.startswith("."))


def _parquet_bytes(df: pd.DataFrame, kind: str, target: Target) -> bytes:
    table = pa.Table.from_pandas(df, preserve_index=False)
    metadata = {
        **(table.schema.metadata or {}),
        b"progtune.kind": kind.encode(),
        b"progtune.target_loss": repr(target.loss).encode(),
    }
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(metadata), sink)
    return sink.getvalue().to_pybytes()


def write_report(report: Report, out: str | os.PathLike, top: int) -> Path:
    """Render everything in memory, write it to a temporary sibling folder, rename it to `out`."""
    path = check_out_dir(out)
    figures = _figures(report, top)
    search_figures, skipped = _search_figures(report)
    figures += search_figures
    blocks = content(replace(report, notes=[*report.notes, *skipped]), figures)
    images = {name: png for name, _, png in figures}
    files: dict[str, bytes] = {
        "report.md": markdown(blocks).encode(),
        "report.html": html_page(blocks[0][1], blocks, images).encode(),
        "ranking.parquet": _parquet_bytes(report.ranking, "ranking", report.target),
        "configs.parquet": _parquet_bytes(report.configs, "configs", report.target),
        **images,
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if path.exists():  # a previous report (check_out_dir allowed it): swap, then drop it
            path.rename(old)
        tmp.rename(path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            old.rename(path)
        raise ResultsError(
            f"cannot write the report to {os.fspath(out)} ({exc.strerror or exc}); "
            "choose a folder you can write"
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return path
