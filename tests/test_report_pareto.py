"""The report's search figures: savings at equal final loss (crossing and scratch budgets), the
Pareto front, and the Optuna study read from the journal or built from the rows."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_analysis import curve, trial, write_experiment

from progtune.analysis.optuna_figures import study_from_journal, study_from_rows
from progtune.analysis.pareto import flops_at_loss, pareto_mask
from progtune.analysis.report import build_report, write_report
from progtune.confirm_cli import scratch_budget_points
from progtune.errors import ProgtuneError

REF = [(0, 6.0), (100, 4.0), (200, 3.0), (400, 2.0)]
SCRATCH = {"budget.tokens": 4000, "lr": 1e-3}
# trial id -> (total FLOPs, final loss, extra fields); the reference trained 4000 tokens.
RUNS = {
    "A": (300.0, 2.0, {"lr": 3e-3}),
    "B": (200.0, 3.0, {"lr": 2e-3}),
    "C": (400.0, 1.75, {"lr": 1e-3, "strategy": "uniform"}),
    "D": (300.0, 2.3, {"lr": 5e-4}),
}


def _experiment(folder: Path) -> Path:
    trials = [trial("p", "ref", "reference", final=2.0, total_flops=400.0, **SCRATCH)]
    curves = curve("p", "ref", REF)
    # Scratch at half and twice the reference's budget (`progtune confirm --scratch-budgets`).
    for tid, flops, loss, tokens in (("s05", 200.0, 2.6, 2000), ("s2", 800.0, 1.5, 8000)):
        trials.append(
            trial("p", tid, "confirm", final=loss, total_flops=flops, strategy="full",
                  unique_layers=(2,), **{**SCRATCH, "budget.tokens": tokens})
        )  # fmt: skip
        curves += curve("p", tid, [(0, 6.0), (flops, loss)])
    for tid, (flops, loss, extra) in RUNS.items():
        trials.append(
            trial("p", tid, final=loss, total_flops=flops, **{"budget.tokens": 4000, **extra})
        )
        curves += curve("p", tid, [(0, 6.0), (flops / 2, 4.0), (flops, loss)], stage_at=flops / 2)
    return write_experiment(folder, trials, curves)


@pytest.fixture(scope="module")
def pareto_report(tmp_path_factory):
    folder = _experiment(tmp_path_factory.mktemp("pareto") / "p")
    report = build_report([folder])
    return report, write_report(report, tmp_path_factory.mktemp("out") / "r", top=3)


def test_savings_at_equal_final_loss_exact(pareto_report):
    report, out = pareto_report
    got = report.ranking.set_index("trial_id")
    crossing, budgets = got["saving_equal_loss"], got["saving_equal_loss_budgets"]
    # A: the reference's curve and the 1x budget both reach 2.0 at 400 FLOPs.
    assert crossing["A"] == pytest.approx(0.25) and budgets["A"] == pytest.approx(0.25)
    # B: the curve is at 3.0 at 200 FLOPs; no budget bracket reaches up to 3.0 (top 2.6).
    assert crossing["B"] == pytest.approx(0.0) and pd.isna(budgets["B"])
    # C: the reference never gets to 1.75; budgets 400 -> 800 bracket it: 400 * sqrt(2).
    assert pd.isna(crossing["C"]) and budgets["C"] == pytest.approx(1 - 1 / math.sqrt(2))
    # D: the curve crosses 2.3 at 340; the budgets at 200 * sqrt(2): the conservative figure
    # is the lower one (a scratch run trained for the budget beats its own mid-run loss).
    assert crossing["D"] == pytest.approx(1 - 300 / 340)
    assert budgets["D"] == pytest.approx(1 - 300 / (200 * math.sqrt(2)))
    assert budgets["D"] < crossing["D"]
    assert budgets[["s05", "s2"]].isna().all()  # scratch runs are not measured against themselves
    parquet = pq.read_table(out / "ranking.parquet").to_pandas()
    assert {"saving_equal_loss", "saving_equal_loss_budgets"} <= set(parquet.columns)
    html = (out / "report.html").read_text()
    assert "saving at equal loss" in html and "pareto.png" in html


def test_report_holds_pareto_and_optuna_figures(pareto_report):
    _, out = pareto_report
    names = {p.name for p in out.glob("*.png")}
    assert {"pareto.png", "history.png", "parallel_coordinates.png", "slice.png"} <= names
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(names)


def test_pareto_mask_and_budget_interpolation():
    flops = np.array([1.0, 2.0, 3.0, 2.0, 4.0])
    loss = np.array([5.0, 3.0, 3.5, 3.0, 1.0])
    assert pareto_mask(flops, loss).tolist() == [True, True, False, True, True]
    points = np.array([[100.0, 3.0], [1000.0, 2.0]])
    assert flops_at_loss(points, 2.5) == pytest.approx(10**2.5)
    assert flops_at_loss(points, 1.9) is None and flops_at_loss(points[:1], 3.0) is None


def test_study_from_rows_keeps_each_knob_and_skips_missing_branches():
    runs = pd.DataFrame(
        {
            "objective": pd.array([3.0, 1.0, None, 2.0], dtype="Float64"),
            "lr.peak": pd.array([1e-4, 1e-2, 1e-3, 1e-3], dtype="Float64"),
            "sampling.strategy": pd.array(["lvps", "none", "lvps", "full"], dtype="string"),
            "sampling.lvps_low": pd.array([2, None, 3, None], dtype="Int64"),
        }
    )
    study = study_from_rows(runs, ["lr.peak", "sampling.strategy", "sampling.lvps_low"])
    assert [t.value for t in study.trials] == [3.0, 1.0, 2.0]  # no objective: not a trial
    assert study.trials[0].params == {
        "lr.peak": 1e-4,
        "sampling.strategy": "lvps",
        "sampling.lvps_low": 2,
    }
    assert "sampling.lvps_low" not in study.trials[1].params
    assert study.trials[0].distributions["lr.peak"].log  # spans more than 20x


def test_study_from_journal_reads_a_copy_and_prefers_the_experiment(tmp_path):
    journal = tmp_path / "optuna.journal"
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    for name, value in (("other", 9.0), ("exp", 1.5)):
        study = optuna.create_study(study_name=name, storage=storage)
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": 0.5},
                distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
                value=value,
            )
        )
    before = sorted(p.name for p in tmp_path.iterdir())
    got = study_from_journal(str(tmp_path), "exp")
    assert [t.value for t in got.trials] == [1.5]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written beside it
    assert study_from_journal(str(tmp_path / "none"), "exp") is None


def test_scratch_budget_points_are_the_reference_at_each_multiple():
    ref = pd.DataFrame([trial("p", "ref", "reference", final=2.0, seed=7, **SCRATCH)])
    rows, seeds = scratch_budget_points(ref, "0.5, 2", "p")
    assert [r["budget.tokens"] for r in rows] == [2000, 8000] and seeds == [7]
    assert [r["trial_id"] for r in rows] == ["reference x0.5", "reference x2"]
    assert all(r["sampling.strategy"] == "full" for r in rows)
    for bad in ("", "1", "0.5,x", "-2", "inf"):
        with pytest.raises(ProgtuneError, match="--scratch-budgets"):
            scratch_budget_points(ref, bad, "p")
    with pytest.raises(ProgtuneError, match="no finished reference"):
        scratch_budget_points(ref.iloc[:0], "2", "p")
