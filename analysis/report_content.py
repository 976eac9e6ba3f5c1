"""The report's words and tables: the terminal ranking and the Markdown/HTML sections.

Rules are stated here once, in the words every report prints.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
from collections.abc import Sequence

import pandas as pd

from progtune import __version__

from .importance import METHOD as IMPORTANCE_METHOD
from .ranking import BOOTSTRAP_LEVEL, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from .render import Block, text_table
from .report_data import Report, run_label

RANKING_RULE = (
    "runs that reach the target first, by FLOPs to target (linear interpolation between "
    "evaluations); then runs that never reach it, by final held-out loss; equal keys share a rank"
)
CONFIG_RULE = (
    "same knobs apart from the seed; configurations whose every seed reaches the target first, by "
    "mean FLOPs to target; then those where some seeds do, by the share that do, then that mean; "
    f"then by mean final loss. Interval: {BOOTSTRAP_LEVEL:.0%} percentile bootstrap of the mean "
    f"({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}) over the seeds that reached it"
)
SAVING_RULE = (
    "saving = 1 - C / C_ref, speed-up = C_ref / C - 1, C = FLOPs to target, C_ref = that of the "
    "reference run of the same experiment"
)
EQUAL_LOSS_RULE = (
    "Saving at equal loss = 1 - the run's total FLOPs / the FLOPs scratch needs for the run's "
    "final loss: crossing = where the reference run's curve first reaches it (optimistic: a "
    "mid-run loss is not annealed); budgets = between scratch runs trained to the end at several "
    "budgets (`progtune confirm --scratch-budgets`), log-linear between the two that bracket it"
)
TERMINAL_CONFIG_WIDTH = 90  # the config column is cut here in the terminal (whole in the files)
PROVENANCE_COLUMNS = (
    "progtune_version",
    "git_sha",
    "data_fingerprint",
    "device",
    "threads",
    "python_version",
    "torch_version",
    "transformers_version",
    "ray_version",
    "optuna_version",
)


# ---------------------------------------------------------------------------- formatting
def _f(value: object, spec: str = ".4g", none: str = "-") -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return none
    return format(value, spec)


def _pct(value: object, signed: bool = False) -> str:
    return _f(value, "+.1%" if signed else ".1%")


def _cut(text: str, width: int | None) -> str:
    return text if width is None or len(text) <= width else text[: width - 3] + "..."


def _ranking_rows(
    report: Report, rows: pd.DataFrame, width: int | None = None, equal_loss: bool = False
) -> tuple[list[str], list[list[str]], list[bool]]:
    """The ranking table; `equal_loss` adds the savings at equal final loss (files only: the
    terminal table keeps its columns)."""
    headers = [
        "rank",
        "run",
        "status",
        "seed",
        "FLOPs to target",
        "saving",
        "speed-up",
        "wall s to target",
        "final loss",
        "config",
    ]
    right = [True, False, False, True, True, True, True, True, True, False]
    cells = [
        [
            str(r["rank"]),
            run_label(report, r),
            str(r["status"]),
            _f(r["seed"], "d"),
            _f(r["flops_to_target"], ".4g", "not reached"),
            _pct(r["saving"]),
            _pct(r["speedup"], signed=True),
            _f(r["wall_s_to_target"], ".3g"),
            _f(r["final_eval_loss"], ".4f"),
            _cut(str(r["config"]), width),
        ]
        for r in rows.to_dict("records")
    ]
    if equal_loss:
        headers[7:7] = ["saving at equal loss: crossing", "saving at equal loss: budgets"]
        right[7:7] = [True, True]
        for cell, r in zip(cells, rows.to_dict("records"), strict=True):
            cell[7:7] = [_pct(r.get("saving_equal_loss")), _pct(r.get("saving_equal_loss_budgets"))]
    return headers, cells, right


def _interval(mean: object, lo: object, hi: object, pct: bool = False) -> str:
    fmt = _pct if pct else (lambda v: _f(v, ".4g"))
    if lo is pd.NA or lo is None:
        return fmt(mean)
    return f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]"


def _config_rows(
    report: Report, width: int | None = None
) -> tuple[list[str], list[list[str]], list[bool]]:
    headers = [
        "rank",
        "seeds",
        "reached",
        "FLOPs to target: mean [95 % CI]",
        "saving: mean [95 % CI]",
        "wall s to target",
        "final loss",
        "config",
    ]
    right = [True, False, True, True, True, True, True, False]
    cells = [
        [
            str(r["rank"]),
            str(r["seeds"]),
            f"{r['reached']}/{r['runs']}",
            _interval(r["flops_to_target_mean"], r["flops_to_target_lo"], r["flops_to_target_hi"]),
            _interval(r["saving_mean"], r["saving_lo"], r["saving_hi"], pct=True),
            _f(r["wall_s_to_target_mean"], ".3g"),
            _f(r["final_eval_loss_mean"], ".4f"),
            _cut(str(r["config"]), width),
        ]
        for r in report.configs.to_dict("records")
    ]
    return headers, cells, right


def _importance_rows(
    report: Report, width: int | None = None
) -> tuple[list[str], list[list[str]], list[bool]]:
    headers = ["eta-squared", "Spearman rho", "kind", "runs", "values", "knob"]
    cells = [
        [
            _f(r["eta_squared"], ".2f"),
            _f(r["spearman_rho"], "+.2f"),
            str(r["kind"]),
            str(r["runs"]),
            str(r["values"]),
            _cut(str(r["knob"]), width),
        ]
        for r in report.importance.to_dict("records")
    ]
    return headers, cells, [True, True, False, True, True, False]


def _reference_lines(report: Report) -> list[str]:
    lines = []
    for r in report.references.to_dict("records"):
        lines.append(
            f"{r['experiment']}/{r['trial_id']}: "
            f"{_f(r['flops_to_target'], '.4g', 'never reaches the target')}"
            + (" FLOPs" if r["reached"] else "")
            + f", {_f(r['wall_s_to_target'], '.3g')} s to target, "
            f"final loss {_f(r['final_eval_loss'], '.4f')} ({r['status']})"
        )
    return lines


def terminal_text(report: Report, top: int) -> str:
    """The ranking table (top `top` runs), configurations over seeds, importance and notes."""
    out = [
        "experiments: "
        + ", ".join(f"{name} ({where})" for name, where in report.results.sources.items()),
        f"target loss: {report.target.loss:.6g} - {report.target.source}",
    ]
    out += [f"reference: {line}" for line in _reference_lines(report)] or ["reference: none"]
    if not report.ranking.empty:
        shown = report.ranking.head(top)
        out += ["", text_table(*_ranking_rows(report, shown, TERMINAL_CONFIG_WIDTH))]
        if len(report.ranking) > top:
            out.append(f"... {len(report.ranking) - top} more (--top K, or ranking.parquet)")
    if report.multi_seed:
        out += [
            "",
            "configurations over seeds:",
            text_table(*_config_rows(report, TERMINAL_CONFIG_WIDTH)),
        ]
    if not report.importance.empty:
        out += ["", "knob importance (eta-squared of log10 objective; Spearman rho):"]
        out.append(text_table(*_importance_rows(report, TERMINAL_CONFIG_WIDTH)))
    if report.notes:
        out += ["", *(f"note: {n}" for n in report.notes)]
    return "\n".join(out)


# ---------------------------------------------------------------------------- content
def _versions() -> dict[str, str]:
    from progtune.summary import git_sha  # no torch or ray: subprocess + importlib.metadata

    out = {
        "progtune": __version__,
        "git SHA": git_sha() or "-",
        "python": platform.python_version(),
    }
    for lib in ("pandas", "pyarrow", "numpy", "matplotlib"):
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = "-"
    return out


def _provenance_rows(report: Report) -> tuple[list[str], list[list[str]], list[bool]]:
    trials = report.results.trials
    names = list(report.results.sources)
    headers = ["", *names]
    rows = [["folder", *(report.results.sources[n] for n in names)]]
    by = {n: trials[trials["experiment"] == n] for n in names}
    rows.append(["runs", *(_roles(by[n]) for n in names)])
    for column in PROVENANCE_COLUMNS:
        rows.append([column.removesuffix("_version"), *(_distinct(by[n][column]) for n in names)])
    rows.append(["started", *(_started(by[n]["started_at"]) for n in names)])
    return headers, rows, [False] * len(headers)


def _roles(trials: pd.DataFrame) -> str:
    counts = trials["role"].value_counts()
    return ", ".join(f"{count} {role}" for role, count in counts.items())


def _distinct(values: pd.Series) -> str:
    found = sorted({str(v) for v in values.dropna()})
    return ", ".join(found) if found else "-"


def _started(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    return f"{values.min():%Y-%m-%d %H:%M} to {values.max():%Y-%m-%d %H:%M} UTC"


def content(report: Report, figures: Sequence[tuple[str, str, bytes]]) -> list[Block]:
    """Every section of the Markdown/HTML report, in order."""
    r = report
    reached = int(r.ranking["reached"].fillna(False).sum()) if not r.ranking.empty else 0
    blocks: list[Block] = [
        ("h1", f"progtune report: {', '.join(r.results.sources)}"),
        (
            "ul",
            [
                f"Target held-out loss: {r.target.loss:.6g}, from {r.target.source}.",
                "Reference run: " + ("; ".join(_reference_lines(r)) or "none") + ".",
                "Experiments: "
                + ", ".join(f"{n} (`{w}`)" for n, w in r.results.sources.items())
                + ".",
                f"Runs ranked: {len(r.ranking)}; {reached} reach the target.",
            ],
        ),
    ]
    if r.notes:
        blocks += [("h2", "Notes"), ("ul", r.notes)]
    blocks += [
        ("h2", "Ranking of runs"),
        ("p", f"Rule: {RANKING_RULE}. {SAVING_RULE}. {EQUAL_LOSS_RULE}."),
    ]
    if not r.ranking.empty:
        blocks.append(("table", *_ranking_rows(r, r.ranking, equal_loss=True)))
    if r.multi_seed:
        blocks += [
            ("h2", "Configurations over seeds"),
            ("p", f"Rule: {CONFIG_RULE}."),
            ("table", *_config_rows(r)),
        ]
    blocks += [("h2", "Knob importance"), ("p", f"Method: {IMPORTANCE_METHOD}.")]
    if r.importance.empty:
        blocks.append(("p", "No knob varies across the runs."))
    else:
        blocks.append(("table", *_importance_rows(r)))
    blocks.append(("h2", "Plots"))
    blocks += [("img", name, caption) for name, caption, _ in figures]
    versions = _versions()
    blocks += [
        ("h2", "Provenance"),
        ("p", "What the runs were produced with (distinct values over each experiment's runs):"),
        ("table", *_provenance_rows(r)),
        (
            "p",
            f"Report made {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC with "
            + ", ".join(f"{k} {v}" for k, v in versions.items())
            + ".",
        ),
    ]
    return blocks
