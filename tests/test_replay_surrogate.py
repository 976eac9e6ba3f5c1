"""bench/replay_surrogate.py: `--snap surrogate` on a small synthetic landscape."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from bench_scripts import load_bench
from test_search_replay import replay_value, small_base, write_landscape

metrics = load_bench("replay_metrics")
strategies = load_bench("replay_strategies")
surrogate_mod = load_bench("replay_surrogate")
replay = load_bench("search_replay")


@pytest.fixture(scope="module")
def land_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("surrogate")
    write_landscape(tmp / "synthetic", small_base(tmp), n_grid=20)
    return tmp / "synthetic"


@pytest.fixture(scope="module")
def land(land_dir):
    return metrics.load_landscape(land_dir)


@pytest.fixture(scope="module")
def surrogate(land):
    return surrogate_mod.Surrogate(land, strategies.SnapTable(land))


def recorded_overrides(land, cfg_id) -> dict:
    row = land.knobs.loc[cfg_id]
    overrides = {k: replay_value(row[k]) for k in strategies.CATEGORICAL + strategies.FLOATS}
    overrides["stages.boundaries"] = list(row["stages.boundaries"])
    return overrides


def off_grid(land, surrogate):
    """A recorded configuration whose LR x 1.2 is off-grid, still nearest to it, and predicted
    otherwise than its recorded value on seed 1."""
    for cfg_id in land.searchable:
        o = recorded_overrides(land, cfg_id)
        o["lr.peak"] = float(land.knobs.loc[cfg_id, "lr.peak"]) * 1.2
        got, dist, values = surrogate.point(o)
        if got == cfg_id and dist > 0 and values[1] != land.objective(cfg_id, 1):
            return cfg_id, o, values
    raise AssertionError("no off-grid point found")


def test_on_grid_gets_its_recorded_value_and_off_grid_an_interpolated_one(land, surrogate):
    for cfg_id in land.searchable:
        got, dist, values = surrogate.point(recorded_overrides(land, cfg_id))
        assert got == cfg_id and dist == 0.0
        assert values == {s: land.objective(cfg_id, s) for s in land.seeds}  # bitwise
    cfg_id, _, values = off_grid(land, surrogate)
    for s in land.seeds:
        recorded = np.array([land.objective(c, s) for c in surrogate.snap.ids])
        finite = recorded[np.isfinite(recorded)]
        assert finite.min() <= values[s] <= finite.max()  # a convex combination of ln values
        # never beyond the best recorded configuration's saving on that seed
        assert surrogate.saving(values[s], s) <= max(land.saving(c, s) for c in land.searchable)


class FixedProposer:
    """Always proposes the same overrides; records what it is told."""

    def __init__(self, overrides):
        import optuna

        self.overrides, self.study, self.values = overrides, optuna.create_study(), []

    def ask(self):
        return self.study.ask(), dict(self.overrides)

    def tell(self, trial, state, value, curve):
        self.values.append((state, value))

    def told(self):
        return len(self.values)


def test_simulator_tells_and_scores_the_surrogate_value_not_the_nearest(land, surrogate):
    cfg_id, overrides, values = off_grid(land, surrogate)
    proposer = FixedProposer(overrides)
    log = replay.simulate(land, proposer, None, 1, slots=2, budget=4, snap=surrogate)
    done = [v for state, v in proposer.values if state == "COMPLETE"]
    assert done and all(v == values[1] != land.objective(cfg_id, 1) for v in done)
    # cost and curve are the nearest configuration's recorded run
    assert all(t.cfg_id == cfg_id and t.run is land.runs[(cfg_id, 1)] for t in log.trials)
    key = log.trace[-1][1]
    assert key == f"{cfg_id}~0" and len({t.key for t in log.trials}) == len(log.trials)
    table = metrics.scores(land)
    score = surrogate.score_series(table["saving_s2"], log.trials, 2)
    assert score[key] == pytest.approx(surrogate.saving(values[2], 2))
    assert score[key] != table.loc[cfg_id, "saving_s2"]
    assert score[key] == pytest.approx(1 - values[2] / surrogate.c_ref[2])


def test_nearest_snapping_still_tells_the_recorded_value(land, surrogate):
    cfg_id, overrides, _ = off_grid(land, surrogate)
    proposer = FixedProposer(overrides)
    replay.simulate(land, proposer, None, 1, slots=2, budget=4)
    done = [v for state, v in proposer.values if state == "COMPLETE"]
    assert done and all(v == land.objective(cfg_id, 1) for v in done)


def test_cli_surrogate_end_to_end(land_dir, tmp_path):
    out = tmp_path / "out"
    args = [str(land_dir), "--strategies", "tpe+starts", "--seeds", "2", "--budget", "8"]
    assert replay.main([*args, "--snap", "surrogate", "--out", str(out)]) == 0
    results = pd.read_parquet(out / "replay.parquet")
    assert len(results) == 4
    assert (results["distinct_points"] >= results["distinct_configs"]).all()
    assert (results["distinct_points"] > results["distinct_configs"]).any()
    assert np.isfinite(results["regret_selector_at_8"]).all()
    assert not math.isnan(pd.read_parquet(out / "summary.parquet")["p_within_best_at_8"][0])
