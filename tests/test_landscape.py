"""bench/landscape.py and friends: the grid plan, a resumed 2-config recording, fidelity maths."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from bench_scripts import load_bench

_load = load_bench


space = _load("landscape_space")
landscape = _load("landscape")
fidelity = _load("preset_fidelity")


@pytest.fixture
def tiny(tmp_path):
    return space.base_config("tiny", {"data.cache_dir": str(tmp_path / "cache")})


def test_plan_starts_with_the_reference_then_scratch_lrs_and_starts(tiny):
    plan = space.landscape_plan(tiny, n_grid=5)
    labels = [p.label for p in plan]
    assert labels[0] == "scratch lr x1"
    n_scratch = len(space.SCRATCH_LR_FACTORS)
    assert all(label.startswith("scratch") for label in labels[:n_scratch])
    assert [p.overrides["sampling.strategy"] for p in plan[n_scratch : n_scratch + 3]] == [
        "none",
        "none",
        "lvps",
    ]
    ids = [space.point_id(tiny, p) for p in plan]
    assert len(set(ids)) == len(ids) == n_scratch + 3 + 5
    # a shorter plan is a prefix of a longer one: a stopped recording is a smaller landscape
    assert labels[:-2] == [p.label for p in space.landscape_plan(tiny, n_grid=3)]
    assert plan[1].overrides["lr.peak"] == pytest.approx(tiny.lr.peak * 0.25)


def test_grid_covers_every_level_and_validates(tiny):
    base4 = space.base_config("cheap", {})
    points = space.grid_points(base4)
    seen = {k: {str(p.overrides[k]) for p in points} for k in points[0].overrides}
    assert seen["sampling.strategy"] == set(space.STRATEGIES)
    assert seen["growth.optimizer_state"] == set(space.OPTIMIZER_STATES)
    assert seen["stages.unique_layers"] == {"[1, 2, 4]", "[2, 4]", "[1, 4]"}
    assert len(seen["lr.peak"]) == len(space.LR_FACTORS)
    for p in points[:: len(points) // 50]:  # every point builds a valid config
        cfg = space.point_config(base4, p, 1)
        assert list(cfg.stages.boundaries) == sorted(set(cfg.stages.boundaries))


def test_cheap_scale_is_cpu_small_with_its_overrides():
    cheap = space.base_config("cheap", {})
    assert (cheap.model.n_layers, cheap.model.d_model, cheap.budget.tokens) == (4, 64, 400_000)
    assert cheap.runtime.threads == 1
    assert cheap.budget.tokens // (cheap.budget.batch_size * cheap.model.seq_len) == 390


def test_two_config_recording_resumes_where_it_stopped(tiny, tmp_path):
    from progtune.data import prepare_data

    out = tmp_path / "landscape"
    plan = space.landscape_plan(tiny, n_grid=0)[:2]  # scratch at two LRs
    runs = landscape.planned_runs(tiny, plan, [1])
    data = prepare_data(tiny.data)
    assert landscape.record(tiny, runs, out, data, limit=1, log=lambda s: None) == 1
    first = landscape.part_path(out, runs[0][2], 1)
    before = first.read_bytes()
    assert [p.name for p in out.glob("*.parquet")] == [first.name]
    assert "1 pending x" in landscape.cost_lines(runs, out)[-1]

    assert landscape.record(tiny, runs, out, data, log=lambda s: None) == 1  # only the missing one
    assert first.read_bytes() == before  # the recorded run was not trained again
    assert landscape.record(tiny, runs, out, data, log=lambda s: None) == 0
    assert not list(out.glob(".*"))  # no temp file left behind

    df = pd.read_parquet(out)
    assert sorted(df["config_id"].unique()) == sorted(r[2] for r in runs)
    for _, run in df.groupby("config_id"):
        curve, summary = run[run["row"] == "curve"], run[run["row"] == "summary"]
        assert len(summary) == 1 and summary["status"].iloc[0] == "completed"
        assert summary["flops"].iloc[0] == pytest.approx(curve["flops"].max())
        assert summary["eval_loss"].iloc[0] == pytest.approx(curve["eval_loss"].iloc[-1])
        assert curve["step"].is_monotonic_increasing
    assert set(df["lr.peak"].round(8)) == {round(tiny.lr.peak, 8), round(tiny.lr.peak * 0.25, 8)}


def test_list_prints_plan_and_refuses_another_scale_in_the_same_folder(tmp_path, capsys):
    out = tmp_path / "l"
    args = ["--preset", "tiny", "--out", str(out), "--grid", "1"]
    assert landscape.main([*args, "--list"]) == 0
    text = capsys.readouterr().out
    assert "pending" in text and "no run of this scale recorded yet" in text
    assert not out.exists()  # --list writes nothing
    base = space.base_config("tiny", {"data.corpus": "stdlib"})
    landscape.check_plan_file(out, base, {"preset": "tiny"})
    other = space.base_config("tiny", {"data.corpus": "stdlib", "budget.tokens": 8192})
    with pytest.raises(SystemExit, match="another scale or corpus"):
        landscape.check_plan_file(out, other, {"preset": "tiny"})


def test_rank_key_orders_reached_by_saving_then_misses_by_final_loss():
    scores = [
        {"saving": None, "final": 3.9},
        {"saving": 0.2, "final": 3.7},
        {"saving": 0.0, "final": 3.8},
        {"saving": None, "final": 3.85},
        {"saving": 0.2, "final": 3.6},
    ]
    assert list(fidelity.ranks(scores)) == [5.0, 1.5, 3.0, 4.0, 1.5]


def test_spearman_and_bootstrap_interval():
    a = [{"saving": s, "final": 0.0} for s in (0.4, 0.3, 0.2, 0.1, 0.0, -0.1)]
    rho, low, high = fidelity.rho_with_interval(a, a, resamples=200)
    assert (rho, low, high) == pytest.approx((1.0, 1.0, 1.0))
    rho, _, high = fidelity.rho_with_interval(a, a[::-1], resamples=200)
    assert rho == pytest.approx(-1.0) and high == pytest.approx(-1.0)
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0])
    assert fidelity.spearman(x, y) == pytest.approx(1 - 6 * 2 / (4 * 15))


def test_kjv_chapters_parse_references_and_wrapped_verses():
    prose = _load("prose_corpus")
    text = "Ge1:1 In the beginning\nGe1:2 And the earth\n   was void.\nGe2:1 Thus\n1Jo1:1 That\n"
    assert prose.chapters(text) == [
        ("Ge001", ["In the beginning", "And the earth was void."]),
        ("Ge002", ["Thus"]),
        ("1Jo001", ["That"]),
    ]
