"""bench/search_replay.py: simulator, snapping, metrics and ASHA replay on synthetic landscapes."""

from __future__ import annotations

import math
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bench_scripts import BENCH, load_bench

from progtune.budget import expected_depth, flops_per_token, stage_tokens

space = load_bench("landscape_space")
landscape = load_bench("landscape")
metrics = load_bench("replay_metrics")
strategies = load_bench("replay_strategies")
replay = load_bench("search_replay")
knobs = load_bench("landscape_knobs")

EVAL_FRACTIONS = np.linspace(0.0, 1.0, 9)


def small_base(tmp_path: Path):
    """tiny at 4 blocks: three growth schedules, like cpu-small."""
    overrides = {
        "model.n_layers": 4,
        "stages.unique_layers": [1, 2, 4],
        "stages.boundaries": [0.2, 0.5],
        "data.cache_dir": str(tmp_path / "cache"),
    }
    return space.base_config("tiny", overrides)


def cumulative_flops(cfg, vocab: int, tokens: float, rates: list[float]) -> float:
    """FLOPs spent after `tokens` tokens; `rates`: each stage's FLOPs per token (stage_rates)."""
    total, start = 0.0, 0
    for n, rate in zip(stage_tokens(cfg), rates, strict=True):
        total += min(max(tokens - start, 0), n) * rate
        start += n
    return total


def stage_rates(cfg, vocab: int) -> list[float]:
    """FLOPs per token of each stage at its expected depth (a Monte Carlo mean: computed once)."""
    return [
        flops_per_token(cfg.model, vocab, expected_depth(k, cfg.model.n_layers, cfg.sampling))
        for k in cfg.stages.unique_layers
    ]


def synthetic_quality(point, seed: int, noise: float) -> float:
    """Loss per FLOP multiplier of a config: a few knobs matter, lr off the preset hurts."""
    o = point.overrides
    q = 1.0
    q *= {"none": 1.5, "lvps": 1.35, "uniform": 1.2, "edge": 1.25, "full": 0.9}[
        o["sampling.strategy"]
    ]
    q *= 1.08 if o.get("growth.operator", "interpolation") == "interpolation" else 1.0
    factor = o.get("lr.peak", 3e-3) / 3e-3
    q *= math.exp(-0.6 * abs(math.log(factor)))
    q *= 1.0 + 0.2 * (o["stages.boundaries"][:1] or [0.0])[0]
    rng = np.random.default_rng([zlib.crc32(point.label.encode()), seed])
    return q * math.exp(noise * rng.standard_normal())


def run_rows(base, point, seed: int, cfg_id: str, q: float, status="completed") -> list[dict]:
    """A synthetic run: loss = 3 + 4 / (1 + q x FLOPs / F0) ** 0.7, eval points every 1/8."""
    cfg = space.point_config(base, point, seed)
    vocab = cfg.data.vocab_size
    total_tokens = cfg.budget.tokens
    rates = stage_rates(cfg, vocab)
    f0 = cumulative_flops(cfg, vocab, total_tokens, rates) / 20
    head = {"config_id": cfg_id, "label": point.label, **landscape.knob_row(cfg)}
    bounds = [0.0, *cfg.stages.boundaries, 1.0]
    rows = []
    for frac in EVAL_FRACTIONS:
        tokens = int(frac * total_tokens)
        flops = cumulative_flops(cfg, vocab, tokens, rates)
        stage = max(i for i, b in enumerate(bounds[:-1]) if frac >= b)
        loss = 3.0 + 4.0 / (1.0 + q * flops / f0) ** 0.7
        rows.append({**head, "row": "curve", "step": tokens // 256, "tokens": tokens})
        rows[-1] |= {"flops": flops, "stage": stage, "eval_loss": loss}
    summary = {**head, "row": "summary", "status": status, "step": rows[-1]["step"]}
    summary |= {
        "tokens": total_tokens,
        "flops": rows[-1]["flops"],
        "eval_loss": rows[-1]["eval_loss"],
    }
    return [*rows, summary]


def write_landscape(folder: Path, base, n_grid: int = 30, seeds=(1, 2), noise=0.03) -> list:
    """A synthetic landscape of the real plan (scratch LRs, starts, grid sample), part files."""
    plan = space.landscape_plan(base, n_grid, sample_seed=0)
    for point in plan:
        cfg_id = space.point_id(base, point)
        for seed in seeds:
            q = synthetic_quality(point, seed, noise) if "scratch" not in point.label else 1.0
            if point.label.startswith("scratch") and point.label != "scratch lr x1":
                q = math.exp(-0.6 * abs(math.log(point.overrides["lr.peak"] / 3e-3)))
            rows = run_rows(base, point, seed, cfg_id, q)
            landscape.write_part(landscape.part_path(folder, cfg_id, seed), rows)
    return plan


@pytest.fixture(scope="module")
def land_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replay")
    folder = tmp / "synthetic"
    write_landscape(folder, small_base(tmp))
    return folder


@pytest.fixture(scope="module")
def land(land_dir):
    return metrics.load_landscape(land_dir)


def _proposer(land, name="tpe+starts", search_seed=0, select_seed=1):
    return strategies.make_proposer(name, land, search_seed, select_seed, "apollo", 8)


class BestProposer:
    """Always proposes one configuration of the landscape (its recorded knobs)."""

    def __init__(self, land, cfg_id):
        import optuna

        row = land.knobs.loc[cfg_id]
        self.overrides = {
            k: replay_value(row[k]) for k in strategies.CATEGORICAL + strategies.FLOATS
        }
        self.overrides["stages.boundaries"] = list(row["stages.boundaries"])
        self.study = optuna.create_study()
        self.n_told = 0

    def ask(self):
        return self.study.ask(), dict(self.overrides)

    def tell(self, trial, state, value, curve):
        self.n_told += 1

    def told(self):
        return self.n_told


def replay_value(v):
    return list(v) if isinstance(v, np.ndarray) else v


def test_simulator_proposes_only_into_free_slots_after_telling_every_finished_trial(land):
    for slots, name in ((1, "random"), (2, "tpe+starts"), (3, "random")):
        log = replay.simulate(
            land, _proposer(land, name), None, select_seed=1, slots=slots, budget=6
        )
        assert len(log.asks) == len(log.trials) > slots
        for ask in log.asks:
            assert ask["unstarted"] < ask["free_slots"] <= slots  # room for this proposal
            assert ask["told"] == ask["finished"]  # every finished trial told before it
        # never more than `slots` trials at once: an interval overlap count on the trials
        events = sorted(
            [(t.start, 1) for t in log.trials]
            + [(t.start + t.run.total_flops, -1) for t in log.trials]
        )
        assert max(np.cumsum([e for _, e in events])) <= slots
        assert log.trials[1].start == 0.0 if slots > 1 else log.trials[1].start > 0


def test_simulator_tells_optuna_complete_values_and_tpe_sees_them(land):
    proposer = _proposer(land)
    log = replay.simulate(land, proposer, None, select_seed=1, slots=2, budget=8)
    done = [t for t in proposer.study.trials if t.state.name == "COMPLETE"]
    assert len(done) == sum(t.state == "COMPLETE" for t in log.trials) >= 6
    for t, ot in zip(log.trials, proposer.study.trials, strict=False):
        if t.state == "COMPLETE":
            assert ot.value == pytest.approx(land.objective(t.cfg_id, 1))
    # compute: the last trace point is at (or just past) the budget, in run-equivalents
    assert 8.0 <= log.trace[-1][0] < 8.0 + 2.0


def test_snap_picks_the_recorded_config_and_the_nearest_lr(land):
    table = strategies.SnapTable(land)
    for cfg_id in land.searchable[:15]:
        row = land.knobs.loc[cfg_id]
        overrides = {k: replay_value(row[k]) for k in strategies.CATEGORICAL + strategies.FLOATS}
        overrides["stages.boundaries"] = list(row["stages.boundaries"])
        got, dist = table.snap(overrides)
        assert dist == pytest.approx(0.0)
        assert land.knobs.loc[got, "label"] == row["label"]
        # a slightly other LR still snaps there, at the documented distance
        overrides["lr.peak"] = row["lr.peak"] * 1.05
        got, dist = table.snap(overrides)
        assert got == cfg_id
        assert dist == pytest.approx(math.log(1.05) / table.spans["lr.peak"])
        # boundaries 10 % later: their mean log distance, over the span of recorded boundaries
        overrides |= {"lr.peak": row["lr.peak"]}
        overrides["stages.boundaries"] = [b * 1.1 for b in row["stages.boundaries"]]
        d = table.distances(overrides)[table.ids.index(cfg_id)]
        assert d == pytest.approx(math.log(1.1) / table.bound_span)


def test_untried_snap_moves_a_repeated_proposal_to_the_next_nearest_config(land):
    """--snap untried: a proposal whose nearest configuration this search already trained goes
    to the nearest one it has not; once all are tried, the nearest again. The default keeps
    the nearest."""
    cfg_id = land.searchable[0]
    row = land.knobs.loc[cfg_id]
    overrides = {k: replay_value(row[k]) for k in strategies.CATEGORICAL + strategies.FLOATS}
    overrides["stages.boundaries"] = list(row["stages.boundaries"])
    nearest = strategies.SnapTable(land)
    untried = strategies.SnapTable(land, untried=True)
    assert nearest.snap(overrides, frozenset({cfg_id}))[0] == cfg_id
    d = untried.distances(overrides)
    order = [untried.ids[i] for i in np.argsort(d, kind="stable")]
    got, dist = untried.snap(overrides, frozenset({cfg_id}))
    assert got == order[1] != cfg_id and dist == pytest.approx(np.sort(d)[1])
    assert untried.snap(overrides, frozenset(untried.ids))[0] == cfg_id


def test_snap_picks_the_fewest_mismatches_on_a_hand_made_landscape(tmp_path):
    base = small_base(tmp_path)
    write_hand_landscape(tmp_path / "hand", base)
    land = metrics.load_landscape(tmp_path / "hand")
    table = strategies.SnapTable(land)
    labels = [p.label for p in space.starting_points(base)]  # none+interp, none+stack, lvps+interp
    knobs = land.knobs.loc[table.ids[0]]
    proposal = {k: replay_value(knobs[k]) for k in strategies.CATEGORICAL + strategies.FLOATS}
    proposal |= {"stages.boundaries": [0.25, 0.55], "lr.peak": base.lr.peak * 2.5}
    for strategy, operator, want in (
        ("uniform", "stacking", labels[1]),  # 1 mismatch vs 2 and 2
        ("lvps", "interpolation", labels[2]),
        ("none", "interpolation", labels[0]),
    ):
        got, dist = table.snap(
            proposal | {"sampling.strategy": strategy, "growth.operator": operator}
        )
        assert land.knobs.loc[got, "label"] == want
        assert dist > 0  # the boundaries and LR differ from every recorded config


def write_hand_landscape(folder: Path, base, speeds=None) -> dict[str, str]:
    """Reference + 3 configs with exactly known savings on each seed (straight-line curves);
    `speeds`: each start's speed per seed {label index: (seed 1, seed 2)}, else 2, 1.6, miss."""
    ref = space.scratch(base, 1.0)
    starts = space.starting_points(base)
    # loss falls linearly from 8 to 4 over the reference's FLOPs; a config's curve is the same
    # line at `speed` x (a hit at 1/speed of the FLOPs), or it stops at `floor` (a miss)
    speeds = speeds or {0: (2.0, 2.0), 1: (1.6, 1.6), 2: (1.0, 1.0)}
    plan = [(ref, (1.0, 1.0), None), *((starts[i], speeds[i], None) for i in (0, 1))]
    plan.append((starts[2], speeds[2], 5.0))
    ids = {}
    for point, speed_per_seed, floor in plan:
        cfg_id = space.point_id(base, point)
        ids[point.label] = cfg_id
        for seed, speed in zip((1, 2), speed_per_seed, strict=True):
            rows = run_rows(base, point, seed, cfg_id, 1.0)
            f_ref = 1e9
            for r in rows:
                r["flops"] = rows[-1]["flops"] and (r["tokens"] / base.budget.tokens) * f_ref
                loss = 8.0 - 4.0 * min(speed * r["flops"] / f_ref, 1.0)
                r["eval_loss"] = max(loss, floor) if floor else loss
            landscape.write_part(landscape.part_path(folder, cfg_id, seed), rows)
    return ids


def test_savings_and_metrics_on_a_hand_made_landscape(tmp_path):
    base = small_base(tmp_path)
    ids = write_hand_landscape(tmp_path / "hand", base)
    land = metrics.load_landscape(tmp_path / "hand")
    assert land.reference_id == ids["scratch lr x1"]
    starts = [p.label for p in space.starting_points(base)]
    fast, slow, miss = (ids[label] for label in starts)
    assert land.saving(fast, 1) == pytest.approx(0.5)
    assert land.saving(slow, 2) == pytest.approx(0.375)  # target at 5/8 of the FLOPs
    assert land.saving(miss, 1) < 0 < land.saving(slow, 1)  # a miss ranks below every hit
    score = metrics.scores(land)["saving_s2"]
    trace = [(0.0, None), (1.0, miss), (2.0, slow), (3.5, fast)]
    assert metrics.compute_to_within(trace, score, 0.5) == 3.5
    assert metrics.compute_to_within(trace[:3], score, 0.5) == math.inf
    assert metrics.compute_to_within(trace[:3], score, 0.39) == 2.0  # 1.5 points below: within 2
    grid = np.array([0.0, 1.5, 2.0, 4.0])
    assert metrics.regret_curve(trace, score, 0.5, grid) == pytest.approx(
        [50.0, 100 * (0.5 - score[miss]), 12.5, 0.0]
    )
    lo, hi = metrics.wilson(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    assert (
        metrics.bootstrap_median(np.array([1.0, 1.0, math.inf, math.inf, math.inf]))[1] == math.inf
    )


def test_asha_replay_stops_a_trial_below_the_rung_cutoff_and_keeps_a_better_one():
    asha = strategies.AshaReplay([1.0, 2.0, 4.0, 8.0], after_growth=False)
    assert not asha.decide("a", 1.0, 5.0)  # first at the rung: nothing to compare with
    assert asha.decide("b", 1.0, 6.0)  # worse than the rung's median: stopped
    assert not asha.decide("c", 1.0, 4.0)  # better: kept
    assert not asha.decide("a", 2.0, 4.5)
    assert asha.decide("c", 2.0, 4.6)  # at the next rung, c is now the worse one


def test_asha_after_growth_counts_rungs_from_the_last_growth(land):
    rungs = [1e8, 2e8]
    grown = next(c for c in land.searchable if len(land.knobs.loc[c, "stages.boundaries"]) == 2)
    run = land.runs[(grown, 1)]
    plain = strategies.AshaReplay(rungs, after_growth=False).checks(run)
    after = strategies.AshaReplay(rungs, after_growth=True).checks(run)
    growth = strategies.last_growth_flops(run)
    assert 0 < growth < run.total_flops
    assert [f for f, _ in plain] == rungs
    assert [f for f, _ in after] == pytest.approx([growth + r for r in rungs])
    # the growth FLOPs match the recorded curve: the eval point at the growth tokens
    at = np.flatnonzero(run.tokens == run.growth_tokens)
    if len(at):
        assert growth == pytest.approx(run.flops[at[0]], rel=1e-6)
    # a rung exactly at the run's end decides nothing (the product's last row has no clock)
    ending = strategies.AshaReplay([run.total_flops / 2, run.total_flops], after_growth=False)
    assert [f for f, _ in ending.checks(run)] == [run.total_flops / 2]


def test_asha_replay_in_the_simulator_prunes_trials(land):
    from progtune.search_driver import asha_rungs
    from progtune.search_state import reference_config

    rungs = asha_rungs(reference_config(land.base), land.vocab_size)
    asha = strategies.make_scheduler("asha", rungs)
    proposer = _proposer(land, "asha")
    log = replay.simulate(land, proposer, asha, select_seed=1, slots=2, budget=8)
    pruned = [t for t in log.trials if t.state == "PRUNED"]
    assert pruned
    states = [t.state.name for t in proposer.study.trials]
    assert states.count("PRUNED") == len(pruned)
    assert all(proposer.study.trials[t.number].intermediate_values for t in pruned)


def test_a_strategy_that_proposes_the_best_config_scores_one(land):
    table = metrics.scores(land)
    best = table["saving_s2"].idxmax()
    assert table["saving_s1"].idxmax() == best  # the synthetic noise keeps it best on both
    rows = []
    for select, score_seed in ((1, 2), (2, 1)):
        log = replay.simulate(land, BestProposer(land, best), None, select, slots=2, budget=8)
        assert {t.cfg_id for t in log.trials} == {best}
        col = table[f"saving_s{score_seed}"]
        targets, picked = metrics.ceilings(table, select, score_seed)
        assert picked == best and targets == {"best": col.max(), "selector": col.max()}
        c = metrics.compute_to_within(log.trace, col, col.max())
        rows.append({"strategy": "best", "compute_to_best": c, "compute_to_selector": c})
        rows[-1] |= {"mean_snap_distance": 0.0, "trials": 1}
    summary = metrics.summarize(pd.DataFrame(rows), budget=8)
    assert summary.loc[0, "p_within_best_at_8"] == summary.loc[0, "p_within_selector_at_8"] == 1.0
    assert "p_within_best_at_16" not in summary


def test_cli_end_to_end(land_dir, tmp_path):
    t0 = time.perf_counter()
    out = tmp_path / "out"
    names = "default,random,tpe+starts,asha-after-growth"
    args = [str(land_dir), "--strategies", names, "--seeds", "2"]
    rc = replay.main([*args, "--budget", "8", "--out", str(out)])
    assert rc == 0
    assert time.perf_counter() - t0 < 30
    results = pd.read_parquet(out / "replay.parquet")
    assert len(results) == 4 * 2 * 2
    assert set(results["select_seed"]) == {1, 2}
    assert (results["select_seed"] != results["score_seed"]).all()
    # the selector's saving is a saving of its config on the scoring seed, never above the best
    table = metrics.scores(metrics.load_landscape(land_dir))
    for r in results.itertuples():
        assert r.selector_saving == table.loc[r.selector_config, f"saving_s{r.score_seed}"]
        assert r.selector_config == table[f"saving_s{r.select_seed}"].idxmax()
        assert r.selector_saving <= r.best_saving
        assert r.compute_to_selector <= r.compute_to_best  # a lower bar is met no later
        assert r.regret_selector_at_8 == pytest.approx(
            r.regret_best_at_8 - 100 * (r.best_saving - r.selector_saving)
        )
    summary = pd.read_parquet(out / "summary.parquet")
    assert list(summary["strategy"]) == names.split(",")
    assert {"p_within_best_at_8", "p_within_selector_at_8_lo", "median_compute_selector_hi"} <= set(
        summary
    )
    assert (out / "replay.png").stat().st_size > 1000
    text = (out / "replay.md").read_text()
    assert "| tpe+starts |" in text and "perfect selector" in text and "| default |" in text


def test_bad_input_exits_2(land_dir, tmp_path, capsys):
    assert replay.main([str(tmp_path / "missing")]) == 2
    assert replay.main([str(land_dir), "--strategies", "tpe,nope"]) == 2
    one = tmp_path / "one-seed"
    one.mkdir()
    for part in sorted(land_dir.glob("*-s1.parquet")):
        (one / part.name).write_bytes(part.read_bytes())
    assert replay.main([str(one)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "nope" in err[1] and "2" in err[2]
    if strategies.gp_missing():  # gp alone, skipped for want of scipy: nothing left to run
        assert replay.main([str(land_dir), "--strategies", "gp"]) == 2
        assert "gp needs scipy" in capsys.readouterr().err
    done = subprocess.run(
        [sys.executable, str(BENCH / "search_replay.py"), str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", strategies.strategy_names())
def test_every_strategy_runs_a_short_search(land, name):
    if name == "gp" and strategies.gp_missing():
        pytest.skip(strategies.gp_missing())
    from progtune.search_driver import asha_rungs
    from progtune.search_state import reference_config

    proposer = _proposer(land, name)
    rungs = asha_rungs(reference_config(land.base), land.vocab_size)
    log = replay.simulate(land, proposer, strategies.make_scheduler(name, rungs), 1, 2, budget=3)
    assert len(log.trials) >= 3 and log.trace[-1][0] >= 3.0
    n_starts = len(strategies.start_configs(land, strategies.SnapTable(land), "apollo"))
    started = [t.cfg_id for t in log.trials[:n_starts]]
    wants = strategies.start_configs(land, strategies.SnapTable(land), "apollo")
    assert (started == wants) == strategies.strategy(name).starts


def test_reduced_space_pins_only_knobs_that_do_not_matter(land):
    pins = strategies.reduced_pins(land, seed=1)
    assert "sampling.strategy" not in pins  # the synthetic landscape's biggest effect
    assert pins.get("lr.rewarmup_fraction") is not None  # no effect in the synthetic model
    assert set(strategies.reduced_pins(land, 1, tolerance=1.0)) == set(strategies.REDUCIBLE)
    assert strategies.reduced_pins(land, 1, tolerance=0.0) == {}
    proposer = _proposer(land, "tpe-reduced")
    for _ in range(5):
        trial, overrides = proposer.ask()
        assert all(overrides[k] == v for k, v in pins.items())
        assert not set(pins) & set(trial.params)  # pinned knobs never enter the study
        proposer.tell(trial, "FAIL", None, [])


def test_a_recorded_landscape_loads(tmp_path):
    """The recorder's real part files (seed 1 of a fidelity check; seed 2 faked from it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "recorded"
    folder.mkdir()
    for part in sorted((BENCH / "landscape" / "fidelity-stdlib-cheap").glob("*-s1.parquet")):
        table = pq.read_table(part)
        pq.write_table(table, folder / part.name)
        i = table.schema.get_field_index("seed")
        seed2 = pa.array([2] * len(table), type=table.schema.field("seed").type)
        pq.write_table(table.set_column(i, "seed", seed2), folder / part.name.replace("-s1", "-s2"))
    land = metrics.load_landscape(folder)
    assert land.base.model.n_layers == 4 and land.base.lr.peak == pytest.approx(4e-3)
    assert land.knobs.loc[land.reference_id, "label"] == "scratch lr x1"
    assert len(land.searchable) == 7  # 10 configs less 3 scratch runs
    table = metrics.scores(land)
    assert (table["saving_s1"] == table["saving_s2"]).all()
    # the one configuration that reached scratch's loss in that check (4.915 vs 5.059)
    assert (table["saving_s1"] > 0).sum() == 1
    assert table.loc[table["saving_s1"].idxmax(), "label"].startswith("2-4@0.3 strategy=none")
    assert strategies.start_configs(land, strategies.SnapTable(land), "apollo")


def test_seed_noise_is_the_median_gap_over_configs_that_hit_on_both_seeds():
    table = pd.DataFrame(
        {
            "saving_s1": [0.40, 0.30, 0.20, -0.10, 0.5],
            "saving_s2": [0.38, 0.36, 0.21, 0.25, -math.inf],
        }
    )
    noise, n = metrics.seed_noise(table, [1, 2])
    assert n == 3  # the miss on one seed and the failed run are left out
    assert noise == pytest.approx(0.02)  # gaps 0.02, 0.06, 0.01


def test_another_scratch_lr_can_set_the_target_and_the_space_stays_the_presets(land_dir):
    preset = metrics.load_landscape(land_dir)
    other = metrics.load_landscape(land_dir, "scratch lr x2")
    assert other.reference_id != preset.reference_id
    assert other.knobs.loc[other.reference_id, "label"] == "scratch lr x2"
    assert other.base.lr.peak == preset.base.lr.peak  # the space is built on the preset
    ref2 = other.reference(1)
    assert other.objective(other.reference_id, 1) == pytest.approx(ref2.total_flops, rel=1e-6)
    with pytest.raises(metrics.LandscapeError, match="no single reference"):
        metrics.load_landscape(land_dir, "scratch lr x7")


def test_the_selector_ceiling_is_the_selection_seeds_best_scored_on_the_other_seed(tmp_path):
    base = small_base(tmp_path)
    # seed 1: a 50 %, b 62.5 %; seed 2: a 50 %, b 37.5 % - seed 1's best falls back on seed 2
    # (speeds that hit the target at an eval point: at 3/8 and 5/8 of the reference's FLOPs)
    speeds = {0: (2.0, 2.0), 1: (8 / 3, 1.6), 2: (1.0, 1.0)}
    ids = write_hand_landscape(tmp_path / "hand", base, speeds)
    land = metrics.load_landscape(tmp_path / "hand")
    a, b = (ids[p.label] for p in space.starting_points(base)[:2])
    table = metrics.scores(land)
    targets, picked = metrics.ceilings(table, select_seed=1, score_seed=2)
    assert picked == b
    assert targets == pytest.approx({"best": 0.5, "selector": 0.375})
    targets, picked = metrics.ceilings(table, select_seed=2, score_seed=1)
    assert (picked, targets["selector"]) == (a, pytest.approx(0.5))
    assert targets["best"] == pytest.approx(0.625)
    rows = []
    for cfg_id in (b, a):  # a search that only proposes b, then one that only proposes a
        log = replay.simulate(land, BestProposer(land, cfg_id), None, 1, slots=1, budget=4)
        targets, _ = metrics.ceilings(table, 1, 2)
        score = table["saving_s2"]
        row = {
            f"compute_to_{c}": metrics.compute_to_within(log.trace, score, v)
            for c, v in targets.items()
        }
        rows.append(row | {"strategy": cfg_id, "mean_snap_distance": 0.0, "trials": 4})
        grid = np.array([0.0, 4.0])
        regret = metrics.regret_curve(log.trace, score, targets["selector"], grid)
        assert regret[-1] == pytest.approx(100 * (0.375 - score[cfg_id]))  # a beats it: -12.5
    # b: 12.5 points below the best, but exactly the selector's; a: within both, from its end
    assert rows[0]["compute_to_best"] == math.inf
    assert rows[0]["compute_to_selector"] == rows[1]["compute_to_best"] == pytest.approx(1.0)
    summary = metrics.summarize(pd.DataFrame(rows), budget=4).set_index("strategy")
    assert "p_within_best_at_8" not in summary
    summary = metrics.summarize(pd.DataFrame(rows), budget=8).set_index("strategy")
    assert summary.loc[b, "p_within_best_at_8"] == 0.0
    assert summary.loc[b, "p_within_selector_at_8"] == 1.0
    assert summary.loc[b, "median_compute_selector"] == pytest.approx(1.0)
    text = metrics.markdown_table(summary.reset_index())
    assert text.count("| " + b + " | 1 |") == 2  # a row in each ceiling's table


def test_default_is_what_the_product_ships_and_follows_its_parser(land, monkeypatch):
    import argparse

    import progtune.cli as cli
    from progtune.search_args import DEFAULT_SPACE
    from progtune.search_state import SearchSettings

    shipped = strategies.strategy("default")
    assert shipped.starts and not shipped.reduced
    assert shipped.sampler == SearchSettings.sampler and shipped.scheduler == "none"
    assert replay.parse_args(["x"]).space == DEFAULT_SPACE
    real = cli.build_parser

    def patched():
        parser = real()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices["search"].set_defaults(sampler="random", scheduler="asha", num_samples=20)
        return parser

    monkeypatch.setattr(cli, "build_parser", patched)
    assert strategies.strategy("default") == strategies.Strategy(
        "random", starts=True, scheduler="asha", num_samples=20
    )
    assert strategies.make_scheduler("default", [1.0, 2.0]) is not None
    proposer = strategies.make_proposer("default", land, 0, 1, "apollo", 8)
    assert isinstance(proposer.sampler, __import__("optuna").samplers.RandomSampler)


def test_a_knob_the_space_does_not_propose_snaps_at_the_bases_value(land):
    from progtune.config import flatten

    table = strategies.SnapTable(land)
    flat = flatten(land.base)
    row = land.knobs.loc[land.searchable[0]]
    overrides = {k: replay_value(row[k]) for k in strategies.CATEGORICAL + strategies.FLOATS}
    overrides["stages.boundaries"] = list(row["stages.boundaries"])
    without = {k: v for k, v in overrides.items() if k not in ("growth.operator", "lr.peak")}
    with_base = without | {k: flat[k] for k in ("growth.operator", "lr.peak")}
    assert table.distances(without) == pytest.approx(table.distances(with_base))


SPACE_FILE = '''
"""A tiny replay space: the 1-2-4 schedule at one boundary, two samplers, the LR."""


def define(trial, base):
    return {
        "stages.unique_layers": [1, 2, 4],
        "stages.boundaries": [trial.suggest_float("first", 0.1, 0.5), 0.8],
        "sampling.strategy": trial.suggest_categorical("sampling.strategy", ["none", "full"]),
        "lr.peak": trial.suggest_float("lr.peak", base.lr.peak / 2, base.lr.peak * 2, log=True),
    }


def starts(base, pinned):
    return [{"first": 0.35, "sampling.strategy": "full", "lr.peak": base.lr.peak}]
'''


def test_a_space_file_replays_end_to_end(land_dir, land, tmp_path):
    path = tmp_path / "tiny_space.py"
    path.write_text(SPACE_FILE)
    proposer = strategies.make_proposer("tpe+starts", land, 0, 1, str(path), 8)
    log = replay.simulate(land, proposer, None, 1, slots=2, budget=4)
    params = [set(t.params) for t in proposer.study.trials]
    assert set().union(*params) == {"first", "sampling.strategy", "lr.peak"}
    first = proposer.study.trials[0].params
    assert first == {"first": 0.35, "sampling.strategy": "full", "lr.peak": land.base.lr.peak}
    starts = strategies.start_configs(land, strategies.SnapTable(land), str(path))
    assert [t.cfg_id for t in log.trials[:1]] == starts
    out = tmp_path / "out"
    args = ["--space", str(path), "--strategies", "default,random", "--seeds", "1"]
    assert replay.main([str(land_dir), *args, "--budget", "4", "--out", str(out)]) == 0
    assert len(pd.read_parquet(out / "replay.parquet")) == 2 * 2
    bad = tmp_path / "points.py"
    bad.write_text("def define(trial):\n    return {}\n\ndef points(base):\n    return [{}]\n")
    assert replay.main([str(land_dir), "--space", str(bad)]) == 2
    assert replay.main([str(land_dir), "--space", str(tmp_path / "none.py")]) == 2


def test_landscape_knobs_counts_each_level_and_refuses_a_non_landscape(land_dir, tmp_path, capsys):
    """Per knob, its levels' configurations add up to the searchable ones and a level's hits
    are those of its configurations; a folder without part files is one line and exit 2."""
    land = metrics.load_landscape(land_dir)
    sc = metrics.scores(land)
    hits = (sc[[f"saving_s{s}" for s in land.seeds]] > 0).any(axis=1)
    t = knobs.table(land_dir)
    for _, g in t.groupby("knob"):
        assert g["configs"].sum() == len(land.searchable)
        assert g["reach either"].sum() == int(hits.sum())
    ops = t[t["knob"] == "operator"].set_index("level")
    for op, row in ops.iterrows():
        ids = [c for c in land.searchable if land.knobs.loc[c, "growth.operator"] == op]
        assert row["configs"] == len(ids) and row["reach either"] == int(hits[ids].sum())
    assert knobs.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a landscape folder" in err[0]
