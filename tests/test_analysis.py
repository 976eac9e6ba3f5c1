"""Analysis: compute-to-target at any target, rankings, seeds + bootstrap, importance, report CLI.

Synthetic experiments are written with progtune.results, with curves simple enough to check by
hand: tokens = 10 x FLOPs and wall_s = FLOPs / 100 on every row.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from progtune import cli
from progtune.analysis.compute_to_target import choose_target, trial_metrics
from progtune.analysis.importance import eta_squared, knob_importance, spearman
from progtune.analysis.load import load_experiments
from progtune.analysis.ranking import bootstrap_interval, rank_trials
from progtune.analysis.report import build_report, terminal_text, write_report
from progtune.errors import ResultsError
from progtune.results import write_curves, write_trials

TARGET = 2.0  # the reference run's final loss in the synthetic experiments


def curve(experiment: str, trial_id: str, points, stage_at: float | None = None) -> list[dict]:
    """(flops, eval_loss) pairs -> curve rows; stage 1 (2 unique blocks) from FLOPs > stage_at."""
    rows = []
    for step, (flops, loss) in enumerate(points):
        stage = int(stage_at is not None and flops > stage_at)
        rows.append(
            {
                "experiment": experiment,
                "trial_id": trial_id,
                "step": step * 10,
                "tokens": int(flops) * 10,
                "flops": float(flops),
                "wall_s": flops / 100,
                "stage": stage,
                "unique_layers": stage + 1,
                "mean_depth": None if step == 0 else stage + 1.5,
                "eval_loss": loss,
            }
        )
    return rows


def trial(experiment: str, trial_id: str, role: str = "search", final=None, **knobs) -> dict:
    return {
        "experiment": experiment,
        "trial_id": trial_id,
        "role": role,
        "status": knobs.pop("status", "completed"),
        "seed": knobs.pop("seed", 0),
        "target_loss": knobs.pop("target_loss", TARGET),
        "final_eval_loss": final,
        "sampling.strategy": knobs.pop("strategy", "full" if role == "reference" else "lvps"),
        "lr.peak": knobs.pop("lr", 1e-3),
        "stages.unique_layers": knobs.pop("unique_layers", (2,) if role == "reference" else (1, 2)),
        "data.vocab_size": 320,
        "progtune_version": "0.1.0",
        "git_sha": "abc123",
        "data_fingerprint": "f00d",
        "device": "cpu",
        **knobs,
    }


def write_experiment(folder: Path, trials: list[dict], curves: list[dict]) -> Path:
    write_trials(trials, folder / "trials.parquet")
    write_curves(curves, folder / "curves.parquet")
    return folder


REF = [(0, 6.0), (100, 4.0), (200, 3.0), (400, 2.0)]
RUNS = {  # trial id -> (curve points, final loss, extra trial fields)
    "A": ([(0, 6.0), (100, 3.0), (200, 1.0)], 1.0, {"lr": 3e-3}),  # crosses 2.0 at 150
    "B": ([(0, 6.0), (100, 4.0), (300, 2.0)], 2.0, {"lr": 2e-3}),  # exactly 2.0 at 300
    "C": ([(0, 6.0), (200, 3.0), (400, 1.0)], 1.0, {"lr": 1e-3}),  # crosses at 300: tie with B
    "D": ([(0, 6.0), (100, 4.0), (200, 2.5)], 2.5, {"strategy": "none"}),  # never
    "E": ([(0, 6.0), (100, 4.0), (200, 3.0)], 3.0, {"strategy": "none"}),  # never, worse
    "F": ([(0, 6.0), (100, 5.0)], None, {"status": "failed"}),  # failed: final loss from curve
}


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("res") / "syn"
    trials = [trial("syn", "ref", "reference", final=2.0, total_flops=400.0)]
    curves = curve("syn", "ref", REF)
    for tid, (points, final, extra) in RUNS.items():
        trials.append(trial("syn", tid, final=final, **extra))
        curves += curve("syn", tid, points, stage_at=100)
    return write_experiment(folder, trials, curves)


def metrics_of(folder: Path, target_loss=None) -> pd.DataFrame:
    res = load_experiments([folder])
    return trial_metrics(res.trials, res.curves, choose_target(res.trials, target_loss))


# ---------------------------------------------------------------------------- compute to target
def test_compute_to_target_exact_numbers(syn):
    m = metrics_of(syn).set_index("trial_id")
    assert m.loc["ref", "flops_to_target"] == 400.0
    a = m.loc["A"]
    # 100 + (3 - 2) / (3 - 1) * (200 - 100) = 150; tokens and wall seconds at the same fraction
    assert (a["flops_to_target"], a["tokens_to_target"], a["wall_s_to_target"]) == (
        150.0,
        1500.0,
        1.5,
    )
    assert a["saving"] == 1 - 150 / 400 and a["speedup"] == pytest.approx(400 / 150 - 1)
    assert m.loc["B", "flops_to_target"] == 300.0 and m.loc["C", "flops_to_target"] == 300.0
    assert m.loc["B", "saving"] == 0.25 and m.loc["B", "speedup"] == pytest.approx(1 / 3)
    assert pd.isna(m.loc["D", "flops_to_target"]) and not m.loc["D", "reached"]
    assert pd.isna(m.loc["D", "saving"])
    assert m.loc["F", "final_eval_loss"] == 5.0  # failed run: its curve's last held-out loss
    assert str(m["flops_to_target"].dtype) == "Float64" and str(m["reached"].dtype) == "boolean"


def test_any_target_is_recomputed_from_the_curves(syn):
    m = metrics_of(syn, target_loss=3.0).set_index("trial_id")
    assert m.loc["ref", "flops_to_target"] == 200.0
    assert m.loc["A", "flops_to_target"] == 100.0 and m.loc["A", "saving"] == 0.5
    # 100 + (4 - 3) / (4 - 2.5) * 100
    assert m.loc["D", "flops_to_target"] == pytest.approx(100 + 100 / 1.5)
    assert m.loc["E", "flops_to_target"] == 200.0
    # The objective follows the new target: FLOPs to it when reached, else the surrogate.
    assert m.loc["A", "objective"] == 100.0
    # F never does: the surrogate on the larger of its (100) and the reference's (400) budget.
    assert m.loc["F", "objective"] == pytest.approx(400.0 * (5.0 / 3.0) ** 10)


def test_target_sources(syn, tmp_path):
    res = load_experiments([syn])
    target = choose_target(res.trials)
    assert target.loss == TARGET and "reference run" in target.source
    assert choose_target(res.trials, 2.5).source == "--target-loss"
    with pytest.raises(ResultsError, match="positive"):
        choose_target(res.trials, -1.0)
    # Two experiments searched with different targets cannot share a ranking by default.
    other = write_experiment(
        tmp_path / "other",
        [trial("other", "ref", "reference", final=2.2, target_loss=2.2)],
        curve("other", "ref", REF),
    )
    both = load_experiments([syn, other])
    with pytest.raises(ResultsError, match=r"different target losses.*--target-loss"):
        choose_target(both.trials)
    assert choose_target(both.trials, 2.1).loss == 2.1


def test_no_reference_and_no_target_asks_for_target_loss(tmp_path):
    folder = write_experiment(
        tmp_path / "noref",
        [trial("noref", "t1", "train", target_loss=None, final=2.0)],
        curve("noref", "t1", REF),
    )
    with pytest.raises(ResultsError, match=r"no reference run.*pass --target-loss X"):
        choose_target(load_experiments([folder]).trials)


# ---------------------------------------------------------------------------- loading
def test_several_experiments_concat_and_the_same_folder_once(syn, tmp_path):
    other = write_experiment(
        tmp_path / "other",
        [trial("other", "ref", "reference", final=2.0), trial("other", "A", final=1.0)],
        curve("other", "ref", REF) + curve("other", "A", [(0, 6.0), (50, 1.0)]),
    )
    res = load_experiments([syn, other, syn / "trials.parquet"])
    assert res.sources == {"syn": str(syn), "other": str(other)}
    assert len(res.trials) == 7 + 2 and set(res.curves["experiment"]) == {"syn", "other"}
    assert str(res.trials["lr.peak"].dtype) == "Float64"
    m = trial_metrics(res.trials, res.curves, choose_target(res.trials)).set_index(
        ["experiment", "trial_id"]
    )
    # Same trial id in two experiments, each against its own reference.
    assert m.loc[("syn", "A"), "flops_to_target"] == 150.0
    assert m.loc[("other", "A"), "flops_to_target"] == 40.0  # (6 - 2) / (6 - 1) * 50
    assert m.loc[("other", "A"), "saving"] == 1 - 40 / 400


def test_same_experiment_name_from_two_folders_is_kept_apart(syn, tmp_path):
    twin = write_experiment(
        tmp_path / "twin" / "syn",
        [trial("syn", "ref", "reference", final=2.0)],
        curve("syn", "ref", REF),
    )
    res = load_experiments([syn, twin])
    assert set(res.trials["experiment"]) == {"syn", f"syn ({twin})"}


# ---------------------------------------------------------------------------- rankings
def test_ranking_order_ties_and_never_reached_after(syn):
    ranked = rank_trials(metrics_of(syn))
    assert list(ranked["trial_id"]) == ["A", "C", "B", "D", "E", "F"]
    # B and C tie at 300 FLOPs: same rank, C first by its lower final loss.
    assert list(ranked["rank"]) == [1, 2, 2, 4, 5, 6]
    assert "ref" not in set(ranked["trial_id"])


SEED_RUNS = {  # config (lr.peak) -> [FLOPs to target per seed, None = never]
    1e-3: [100.0, 200.0, 300.0],  # mean 200
    2e-3: [150.0, 150.0],  # mean 150: best
    3e-3: [50.0, None],  # lowest mean, but one seed never reaches: after all that always do
    4e-3: [None],
}


def crossing_at(flops: float | None) -> list[tuple[float, float]]:
    """A curve at 4.0 at FLOPs 0 that reaches exactly TARGET at `flops` (None: stays at 3)."""
    if flops is None:
        return [(0.0, 4.0), (500.0, 3.0)]
    return [(0.0, 4.0), (flops, TARGET), (500.0, 1.5)]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("res") / "seeds"
    trials = [trial("seeds", "ref", "reference", final=2.0)]
    curves = curve("seeds", "ref", REF)
    for lr, values in SEED_RUNS.items():
        for seed, flops in enumerate(values):
            tid = f"lr{lr:g}-s{seed}"
            final = 3.0 if flops is None else 1.5
            trials.append(trial("seeds", tid, final=final, lr=lr, seed=seed))
            curves += curve("seeds", tid, crossing_at(flops))
    return write_experiment(folder, trials, curves)


def test_configurations_over_seeds_mean_interval_and_rank(seeds):
    report = build_report([seeds])
    c = report.configs
    assert list(c["config"]) == [f"lr.peak={lr:g}" for lr in (2e-3, 1e-3, 3e-3, 4e-3)]
    assert list(c["rank"]) == [1, 2, 3, 4]
    assert list(c["runs"]) == [2, 3, 2, 1] and list(c["reached"]) == [2, 3, 1, 0]
    best, second = c.iloc[0], c.iloc[1]
    assert best["flops_to_target_mean"] == 150.0
    assert (best["flops_to_target_lo"], best["flops_to_target_hi"]) == (150.0, 150.0)
    assert second["flops_to_target_mean"] == 200.0 and second["seeds"] == "0,1,2"
    assert second["saving_mean"] == pytest.approx(0.5)  # 1 - 200 / 400
    assert 100.0 <= second["flops_to_target_lo"] < 200.0 < second["flops_to_target_hi"] <= 300.0
    assert second["saving_lo"] < 0.5 < second["saving_hi"]
    assert pd.isna(c.iloc[2]["flops_to_target_lo"])  # one seed reached: no interval
    assert pd.isna(c.iloc[3]["flops_to_target_mean"])
    assert report.multi_seed
    assert "configurations over seeds" in terminal_text(report, top=3)


def test_bootstrap_is_seeded_and_contains_the_mean():
    values = [100.0, 180.0, 260.0, 310.0, 420.0, 515.0]
    lo, hi = bootstrap_interval(values, seed=0)
    assert lo < np.mean(values) < hi and (lo, hi) == bootstrap_interval(values, seed=0)
    assert bootstrap_interval(values, seed=1) != (lo, hi)  # it really is the seed
    # The same percentile bootstrap, spelled out:
    rng = np.random.default_rng(0)
    x = np.array(values)
    means = x[rng.integers(0, 6, size=(2000, 6))].mean(axis=1)
    assert (lo, hi) == tuple(np.quantile(means, [0.025, 0.975]))
    assert bootstrap_interval([5.0]) is None


# ---------------------------------------------------------------------------- importance
def test_eta_squared_and_spearman_by_hand():
    # groups a = {1, 2}, b = {3, 4}: between 2 * 1^2 + 2 * 1^2 = 4 of a total 5
    assert eta_squared(np.array([1.0, 2.0, 3.0, 4.0]), np.array(list("aabb"))) == 0.8
    assert eta_squared(np.array([1.0, 2.0]), np.array(list("ab"))) is None  # one run per group
    # ranks of y [1, 2, 4, 3]: rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 40, 30])) == pytest.approx(0.8)


def test_importance_finds_the_knob_that_matters():
    rng = np.random.default_rng(0)
    n = 16
    strategy = np.array(["lvps", "none"] * (n // 2))
    lr = rng.uniform(1e-3, 1e-2, n)
    objective = np.where(strategy == "lvps", 1e9, 4e9) * rng.uniform(0.95, 1.05, n)
    runs = pd.DataFrame(
        {
            "role": "search",
            "objective": pd.array(objective, dtype="Float64"),
            "sampling.strategy": pd.array(strategy, dtype="string"),
            "lr.peak": pd.array(lr, dtype="Float64"),
            "growth.operator": "interpolation",  # does not vary: left out
        }
    )
    imp = knob_importance(runs, ["sampling.strategy", "lr.peak", "growth.operator"])
    assert list(imp["knob"]) == ["sampling.strategy", "lr.peak"]
    assert imp.loc[0, "eta_squared"] > 0.95 and imp.loc[1, "eta_squared"] < 0.3
    assert pd.isna(imp.loc[0, "spearman_rho"]) and abs(imp.loc[1, "spearman_rho"]) < 0.5


# ---------------------------------------------------------------------------- report files
@pytest.fixture(scope="module")
def syn_report(syn, tmp_path_factory):
    report = build_report([syn])
    return report, write_report(report, tmp_path_factory.mktemp("report") / "out", top=3)


def test_report_files_and_ranking_parquet_round_trip(syn_report):
    report, out = syn_report
    names = sorted(p.name for p in out.iterdir())
    assert {"report.html", "report.md", "ranking.parquet", "configs.parquet"} <= set(names)
    pngs = [n for n in names if n.endswith(".png")]
    assert {"loss_vs_flops.png", "loss_vs_wall.png", "depth_schedule.png"} <= set(pngs)
    assert "objective_vs_lr.peak.png" in pngs and "objective_vs_sampling.strategy.png" in pngs
    for name in pngs:
        assert (out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(pngs)
    md = (out / "report.md").read_text()
    for text in ("Target held-out loss: 2", "syn/ref", "eta-squared", "git_sha", "abc123"):
        assert text in md
    back = pd.read_parquet(out / "ranking.parquet")
    pd.testing.assert_frame_equal(back, report.ranking)
    assert pq.read_schema(out / "ranking.parquet").metadata[b"progtune.kind"] == b"ranking"
    pd.testing.assert_frame_equal(pd.read_parquet(out / "configs.parquet"), report.configs)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders


@pytest.mark.parametrize("mine", ["notes.txt", "figure.png"])
def test_out_folder_with_other_files_is_refused(syn_report, tmp_path, mine):
    (tmp_path / mine).write_text("keep")  # even a PNG: only a previous report is replaced
    with pytest.raises(ResultsError, match="holds other files"):
        write_report(syn_report[0], tmp_path, top=3)
    assert [p.name for p in tmp_path.iterdir()] == [mine]


# ---------------------------------------------------------------------------- CLI, bad input
def report_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "progtune.cli", "report", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )


def assert_bad_input(out: subprocess.CompletedProcess, *words: str) -> None:
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("progtune: error:"), out.stderr
    for word in words:
        assert word in lines[0], lines[0]


def _bad_folder(tmp_path: Path, case: str) -> Path:
    folder = tmp_path / case
    folder.mkdir()
    if case == "corrupt":
        (folder / "trials.parquet").write_bytes(b"PAR1 this is not parquet")
    elif case == "foreign":
        pd.DataFrame({"a": [1]}).to_parquet(folder / "trials.parquet")
    elif case == "version":
        write_trials([trial(case, "ref", "reference", final=2.0)], folder / "trials.parquet")
        table = pq.read_table(folder / "trials.parquet")
        meta = {**table.schema.metadata, b"progtune.schema_version": b"99"}
        pq.write_table(table.replace_schema_metadata(meta), folder / "trials.parquet")
    elif case == "no-curves":
        write_trials([trial(case, "ref", "reference", final=2.0)], folder / "trials.parquet")
    elif case == "noref":
        write_experiment(
            folder,
            [trial(case, "t1", "train", target_loss=None, final=2.0)],
            curve(case, "t1", REF),
        )
    return folder


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("empty", ["no results in", "progtune search"]),
        ("corrupt", ["not a readable Parquet file"]),
        ("foreign", ["not a progtune results file"]),
        ("version", ["schema version 99", "upgrade progtune"]),
        ("no-curves", ["no curves results"]),
        ("noref", ["there is no reference run", "--target-loss"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case, words):
    folder = _bad_folder(tmp_path, case)
    out = report_cli(folder, "--out", tmp_path / "out", cwd=tmp_path)
    assert_bad_input(out, *words)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_paths_are_one_line(syn, tmp_path):
    assert_bad_input(report_cli(tmp_path / "missing", cwd=tmp_path), "no results folder")
    assert_bad_input(report_cli(syn.parent, cwd=tmp_path), "holds experiments", str(syn))


@pytest.mark.parametrize(
    ("args", "words"),
    [(["--top", "0"], "--top must be at least 1"), (["--target-loss", "nan"], "positive")],
)
def test_bad_options_are_one_line(syn, capsys, args, words):
    assert cli.main(["report", str(syn), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


def test_out_that_is_a_file_is_refused_before_any_work(syn, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli.main(["report", str(syn), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_unreached_target_replaces_a_previous_report_and_says_so(syn, syn_report, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(syn_report[1], out)  # a previous report is replaced as a whole
    done = report_cli(syn, "--target-loss", "0.5", "--out", out, "--top", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "No run reaches the target loss 0.5" in done.stdout and done.stderr == ""
    assert "No run reaches the target loss 0.5" in (out / "report.md").read_text()
    ranking = pd.read_parquet(out / "ranking.parquet")
    assert (ranking["target_loss"] == 0.5).all() and not ranking["reached"].any()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_single_run_is_reported_without_comparison(tmp_path):
    single = write_experiment(
        tmp_path / "single",
        [trial("single", "ref", "reference", final=2.0), trial("single", "A", final=1.0)],
        curve("single", "ref", REF) + curve("single", "A", [(0, 6.0), (200, 1.0)]),
    )
    out = report_cli(single, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "no ranking comparison possible" in out.stdout and "   1  A  " in out.stdout


def test_import_direction_no_torch_or_ray(syn, tmp_path):
    # Optuna draws the report's search figures (issue 14), so it may load; torch and ray never.
    code = (
        "import sys, progtune.analysis\n"
        "from progtune.analysis.report import build_report, write_report\n"
        f"write_report(build_report([{str(syn)!r}]), {str(tmp_path / 'o')!r}, 3)\n"
        "print([m for m in ('torch', 'ray', 'transformers') if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "o" / "report.html").exists()
