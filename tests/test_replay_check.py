"""bench/replay_check.py: a real search's trials against a synthetic landscape (no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from bench_scripts import load_bench
from test_search_replay import small_base, write_landscape

from progtune.results import trials_schema, write_curves, write_trials

metrics = load_bench("replay_metrics")
load_bench("landscape_space")
load_bench("search_replay")
check = load_bench("replay_check")


@pytest.fixture(scope="module")
def land_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("check")
    folder = tmp / "synthetic"
    write_landscape(folder, small_base(tmp), n_grid=12)
    (folder / "_plan.json").write_text(json.dumps({"preset": "b4-400k", "corpus": "stdlib"}))
    return folder


def recorded_knobs(land_dir: Path, cfg_id: str, seed: int) -> dict:
    """A recorded run's knobs as the product writes them to trials.parquet."""
    summary = pq.read_table(land_dir / f"{cfg_id}-s{seed}.parquet").to_pylist()[-1]
    return {k: v for k, v in summary.items() if k in trials_schema().names}


def write_experiment(
    folder: Path, land_dir: Path, land, seed: int = 1, knobs: dict | None = None
) -> dict[str, str]:
    """A reference run and four search trials: two copies of recorded runs (one with its final
    loss changed: it must be flagged), one at 1.05x a recorded LR, and one stopped by ASHA."""
    ref = land.reference(1)
    c_ref = ref.total_flops  # the synthetic reference reaches its own final loss at its end
    hit = [c for c in land.searchable if land.saving(c, 1) > 0][:3]
    ids = {"same": hit[0], "changed": hit[1], "near": hit[2], "stopped": hit[0]}
    rows = [
        recorded_knobs(land_dir, land.reference_id, 1)
        | {"trial_id": "reference", "role": "reference", "status": "completed"}
        | {"flops_to_target": c_ref, "objective": c_ref, "final_eval_loss": ref.final_loss}
        | {"total_flops": ref.total_flops, "seed": seed}
    ]
    for trial_id, cfg_id in ids.items():
        run = land.runs[(cfg_id, 1)]
        row = recorded_knobs(land_dir, cfg_id, 1) | {"trial_id": trial_id, "role": "search"}
        row |= {"status": "stopped" if trial_id == "stopped" else "completed", "seed": seed}
        row |= {"objective": land.objective(cfg_id, 1), "final_eval_loss": run.final_loss}
        row |= {"total_flops": run.total_flops, "runtime.threads": 1}
        if trial_id == "changed":
            row["final_eval_loss"] += 0.01
            row["objective"] *= 1.1
        if trial_id == "near":
            row["lr.peak"] *= 1.05
        rows.append(row)
    for row in rows:
        row |= knobs or {}
        row["experiment"] = "real"
        row["saving"] = 1 - row["objective"] / c_ref
    folder.mkdir(parents=True)
    write_trials(rows, folder / "trials.parquet")
    write_curves([], folder / "curves.parquet")
    return ids


def test_each_trial_is_snapped_checked_and_a_changed_exact_run_is_flagged(land_dir, tmp_path):
    land = metrics.load_landscape(land_dir)
    ids = write_experiment(tmp_path / "real", land_dir, land)
    from progtune.analysis.load import load_experiment

    trials, _ = load_experiment(tmp_path / "real")
    rows = check.check_rows(trials, land, check.SnapTable(land)).set_index("trial_id")
    assert list(rows.index) == ["reference", "same", "changed", "near"]  # stopped: not finished
    assert rows.loc["reference", "snapped"] == land.reference_id
    assert rows.loc["reference", "match"] and rows.loc["same", "match"]
    assert rows.loc["same", "exact"] and rows.loc["same", "snapped"] == ids["same"]
    assert rows.loc["same", "real_saving"] == pytest.approx(land.saving(ids["same"], 1))
    assert rows.loc["same", "recorded_saving"] == pytest.approx(land.saving(ids["same"], 1))
    assert rows.loc["changed", "exact"] and rows.loc["changed", "match"] is False
    near = rows.loc["near"]
    assert near["snapped"] == ids["near"] and not near["exact"] and near["match"] is None
    span = check.SnapTable(land).spans["lr.peak"]
    assert near["snap_distance"] == pytest.approx(math.log(1.05) / span)
    assert near["differs_in"] == "lr.peak"
    # the compute the real search trained: its search trials (stopped too), not the reference
    spent = sum(land.runs[(c, 1)].total_flops for c in ids.values()) / land.reference(1).total_flops
    assert check.spent_run_equivalents(trials, land, 1) == pytest.approx(spent)


def test_cli_prints_the_runs_and_the_replay_beside_the_real_search(land_dir, tmp_path, capsys):
    land = metrics.load_landscape(land_dir)
    write_experiment(tmp_path / "real", land_dir, land)
    args = [str(land_dir), str(tmp_path / "real"), "--seeds", "3", "--strategy", "random"]
    assert check.main(args) == 0
    out = capsys.readouterr().out
    assert out.count("| match |") == 2 and out.count("MISMATCH") == 1
    assert "3 finished search trials; 2 at exact grid points, 1 of them match" in out
    assert "replay of random (3 search seeds" in out
    assert "the reference run is at the landscape's scale" in out
    write_experiment(tmp_path / "seed0", land_dir, land, seed=0)  # the product's default seed
    assert check.main([str(land_dir), str(tmp_path / "seed0"), "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "ran on seed 0, not recorded here" in out and "seed not recorded" in out
    tokens = land.base.budget.tokens
    write_experiment(tmp_path / "other", land_dir, land, knobs={"budget.tokens": 2 * tokens})
    assert check.main([str(land_dir), str(tmp_path / "other"), "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "NOT at the landscape's scale (real vs recorded reference): budget.tokens " in out
    assert f"{2 * tokens} vs {tokens}" in out and "| match |" not in out


def test_the_written_config_is_the_landscapes_scale_and_the_product_reads_it(land_dir, tmp_path):
    from progtune.config import resolve

    path = tmp_path / "scale.yaml"
    assert check.main([str(land_dir), "--write-config", str(path), "--seed", "2"]) == 0
    base = resolve("cpu-small", str(path), {})
    assert (base.budget.batch_size, base.budget.tokens, base.lr.peak) == (4, 400_000, 2e-3)
    assert base.seed == 2 and base.runtime.threads == 1 and base.runtime.precision == "fp32"


def test_bad_input_exits_2(land_dir, tmp_path, capsys):
    assert check.main([str(land_dir), str(tmp_path / "missing")]) == 2
    assert check.main([str(land_dir)]) == 2
    assert check.main([str(tmp_path), str(tmp_path)]) == 2
    assert check.main([str(land_dir), str(tmp_path), "--strategy", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") for line in err)
