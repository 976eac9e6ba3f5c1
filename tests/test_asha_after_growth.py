"""`--scheduler asha-after-growth` (issue 11): ASHA whose rungs count FLOPs after a trial's last
growth, so no progressive schedule is compared, or stopped, in its cheap early stages."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from progtune.budget import last_stage_start_flops, stage_start_tokens
from progtune.config import flatten, resolve, with_overrides
from progtune.model import flops_per_token
from progtune.search_driver import asha_rungs
from progtune.search_state import reference_config
from progtune.trial_trainable import TrialSetup, flops_after_growth, train_trial, trial_config

# A 4-block model 32 wide, seq 32, vocab 320: per token and block 3 x (24 h^2 + 4 n h) =
# 3 x (24,576 + 4,096) = 86,016 FLOPs; the head 3 x 2 h V = 61,440. So at depth d:
# 1 -> 147,456; 2 -> 233,472; 4 -> 405,504 FLOPs per token. 16,384 tokens in 64 steps of 256.
FPT = {1: 147_456, 2: 233_472, 4: 405_504}
SMALL = {
    "model.n_layers": 4,
    "stages.unique_layers": (1, 2, 4),
    "stages.boundaries": (0.25, 0.5),
    "sampling.strategy": "none",  # executed depth = k: planned FLOPs are exact
}


def _setup(base, vocab, after_growth=True):
    rungs = asha_rungs(reference_config(base), vocab)
    return TrialSetup(
        base=flatten(base), pinned={}, points=[], threads=1, stop_at_target=False,
        target_loss=None, board=None, eval_at_flops=rungs, rungs_after_growth=after_growth,
        vocab_size=vocab,
    )  # fmt: skip


# ---------------------------------------------------------------------------- rung evaluations
def test_rung_evaluations_of_a_1_2_4_schedule_start_at_its_last_stage_scratch_at_zero():
    base = resolve("tiny", overrides=SMALL)
    setup = _setup(base, 320)
    full = 16_384 * FPT[4]  # the scratch reference: 6,643,777,536 FLOPs
    assert setup.eval_at_flops == [full / 8, full / 4, full / 2, full]
    # Growth after steps 16 and 32: 4,096 tokens at depth 1, 4,096 at depth 2 before stage 3.
    start = 4_096 * FPT[1] + 4_096 * FPT[2]
    assert start == 1_560_281_088
    grown = trial_config({}, setup)
    assert list(grown.eval.at_flops) == [
        2_390_753_280, 3_221_225_472, 4_882_169_856, 8_204_058_624,  # start + each rung
    ]  # fmt: skip
    scratch = trial_config({"stages.unique_layers": (4,), "stages.boundaries": ()}, setup)
    assert list(scratch.eval.at_flops) == [full / 8, full / 4, full / 2, full]
    plain = trial_config({}, _setup(base, 320, after_growth=False))  # `asha`: one shared list
    assert list(plain.eval.at_flops) == setup.eval_at_flops


def test_the_last_stage_starts_on_train_s_step_grid_not_at_the_raw_fraction():
    from progtune.train import Plan

    cfg = resolve("tiny", overrides={**SMALL, "stages.boundaries": (0.3, 0.55)})
    # 64 steps: growth after round(19.2) = 19 and round(35.2) = 35 steps (not 0.3 x 16,384).
    assert stage_start_tokens(cfg) == [0, 19 * 256, 35 * 256]
    assert [t // 256 for t in stage_start_tokens(cfg)[1:]] == Plan.of(cfg).growth_steps
    assert last_stage_start_flops(cfg, 320) == 4_864 * FPT[1] + 4_096 * FPT[2]
    single = with_overrides(cfg, {"stages.unique_layers": (4,), "stages.boundaries": ()})
    assert last_stage_start_flops(single, 320) == 0.0


# ---------------------------------------------------------------------------- reported metric
class _Reports:
    leader, device = True, None

    def __init__(self):
        self.sent: list[dict] = []

    def last_checkpoint(self):
        return None

    def send(self, metrics, checkpoint_dir):
        self.sent.append(metrics)


def test_flops_after_growth_is_zero_until_the_last_growth_then_counts_flops_since(
    tiny_cfg, tiny_data, one_torch_thread
):
    """The tiny preset (1 -> 2 blocks at half its 64 steps) trained for real: every report
    before the growth (the growth row too) says 0, later ones FLOPs past the planned start,
    which is where train.py grew; the trial evaluates where its own rungs fall."""
    cfg = with_overrides(tiny_cfg, {"sampling.strategy": "none"})
    vocab = tiny_data.vocab_size
    setup = _setup(cfg, vocab)
    reports = _Reports()
    train_trial({}, tiny_data, setup, reports)
    rows, final = reports.sent[:-1], reports.sent[-1]
    start = last_stage_start_flops(cfg, vocab)
    grown_at = next(r for r in rows if r["step"] == 32)  # the growth row: last of stage 0
    assert grown_at["stage"] == 0 and grown_at["flops"] == pytest.approx(start, rel=1e-12)
    assert grown_at["flops"] > 0 and grown_at["flops_after_growth"] == 0.0
    *during, end = rows
    for r in during:
        expected = 0.0 if r["step"] <= 32 else r["flops"] - start
        assert r["flops_after_growth"] == pytest.approx(expected, abs=1.0), r
    assert during[-1]["flops_after_growth"] > 0
    step = 256 * flops_per_token(cfg.model, vocab, 2)  # one step of the last stage
    for rung in setup.eval_at_flops[:2]:  # within the run: a row within one step past each
        assert any(rung <= r["flops_after_growth"] < rung + step for r in during), rung
    # The run's last row and the final summary carry no clock: ASHA skips them, so no rung at
    # the very end (here start + 1/2 rung == its last FLOPs) can stop a finished trial.
    assert end["step"] == 64 and final["final"]
    assert end["flops"] == pytest.approx(start + setup.eval_at_flops[2], rel=1e-12)
    assert "flops_after_growth" not in end and "flops_after_growth" not in final


def test_a_row_before_the_last_growth_says_zero_even_past_the_planned_start():
    """Depth sampling can spend more than planned before the growth: still 0 there."""
    cfg = resolve("tiny", overrides=SMALL)
    start = last_stage_start_flops(cfg, 320)
    assert flops_after_growth({"stage": 1, "flops": start + 5e6}, cfg, start) == 0.0
    assert flops_after_growth({"stage": 2, "flops": start - 5e6}, cfg, start) == 0.0
    assert flops_after_growth({"stage": 2, "flops": start + 5e6}, cfg, start) == 5e6


def test_plain_asha_trials_clock_their_flops_but_not_on_the_last_row(
    tiny_cfg, tiny_data, one_torch_thread
):
    """Plain asha's clock is the row's FLOPs, but not on the last step's row nor the summary: a
    run of exactly a scratch budget meets the last rung there, and a STOP on it would lose the
    finished trial's result (Tune drops the final summary of a stopped trial)."""
    cfg = with_overrides(tiny_cfg, {"budget.tokens": 4_096, "stages.boundaries": (0.5,)})
    reports = _Reports()
    train_trial({}, tiny_data, _setup(cfg, tiny_data.vocab_size, after_growth=False), reports)
    assert reports.sent and all("flops_after_growth" not in m for m in reports.sent)
    *rows, last_row, summary = reports.sent
    assert rows and all(m["asha_flops"] == m["flops"] for m in rows)
    assert "asha_flops" not in last_row and "asha_flops" not in summary
    assert last_row["step"] == summary["step"] and summary["final"]


# ---------------------------------------------------------------------------- the scheduler
def _scheduler(name):
    from progtune.tuning import _scheduler as make

    base = resolve("tiny", overrides=SMALL)  # _scheduler reads these two settings only
    return make(SimpleNamespace(base=base, scheduler=name), 320)


def test_scheduler_object_clocks_flops_after_growth_with_asha_s_rungs():
    sched = _scheduler("asha-after-growth")
    plain = _scheduler("asha")
    full = 16_384 * FPT[4]
    assert (sched._time_attr, plain._time_attr) == ("flops_after_growth", "asha_flops")
    for s in (sched, plain):
        assert (s._metric, s._mode, s._max_t, s._reduction_factor) == ("eval_loss", "min",
                                                                        2 * full, 2)  # fmt: skip
        assert sorted(m for m, _ in s._brackets[0]._rungs) == [full / 8 * 2**i for i in range(5)]


def test_results_before_the_last_growth_never_reach_a_rung():
    """Reports at time 0 (before the last growth) are never recorded: the first one past the
    grace period is compared, and a worse second trial is stopped only there."""
    from ray.tune.schedulers import TrialScheduler

    sched = _scheduler("asha-after-growth")
    full = 16_384 * FPT[4]
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    sched.on_trial_add(None, a)
    sched.on_trial_add(None, b)
    for trial, loss in ((a, 3.0), (b, 9.0)):
        result = {"flops_after_growth": 0.0, "eval_loss": loss, "flops": full}
        assert sched.on_trial_result(None, trial, result) == TrialScheduler.CONTINUE
    assert all(not recorded for _, recorded in sched._brackets[0]._rungs)
    on_rung = {"flops_after_growth": full / 8, "flops": full}
    assert sched.on_trial_result(None, a, {**on_rung, "eval_loss": 3.0}) == "CONTINUE"
    assert sched.on_trial_result(None, b, {**on_rung, "eval_loss": 9.0}) == "STOP"


# ---------------------------------------------------------------------------- bad combinations
def test_asha_after_growth_with_workers_on_local_ray_exits_2(tmp_path, capsys):
    from progtune.cli import main

    args = ["search", "--preset", "tiny", "--num-samples", "1", "--storage", str(tmp_path / "r"),
            "--name", "n", "--workers-per-trial", "2",
            "--scheduler", "asha-after-growth"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--scheduler asha-after-growth with --workers-per-trial above 1 needs a Ray" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["asha-after-growth", "asha"])
def test_dry_run_says_the_rungs_and_each_trial_s_growth(tiny_cfg, capsys, name):
    """tiny: 16,384 tokens at 2 x 32 wide, growth after 32 of 64 steps; per token 233,472 FLOPs
    at depth 2 (the reference), 147,456 at depth 1: 3.825e9 in all, the growth at 1.208e9."""
    from progtune.cli import main

    args = ["search", "--dry-run", "--preset", "tiny", "--space", "smoke", "--num-samples", "2",
            "--scheduler", name, f"data.cache_dir={tiny_cfg.data.cache_dir}",
            "sampling.strategy=none"]  # fmt: skip
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    rungs = "ASHA rungs (1/8, 1/4, 1/2, 1 of the reference): 4.782e+08, 9.563e+08, 1.913e+09, "
    grown = [ln for ln in lines if "last growth at" in ln]
    if name == "asha":
        assert rungs + "3.825e+09 cumulative FLOPs" in lines and not grown
        return
    assert any(
        ln.startswith(rungs + "3.825e+09 FLOPs after each trial's last growth") for ln in lines
    )
    assert grown == [f"   trial {i}: last growth at 1.208e+09 planned FLOPs" for i in (0, 1)]


# ---------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_search_with_asha_after_growth_stops_no_trial_before_its_last_growth(tmp_path):
    """A real search (local Ray on 127.0.0.1, tiny preset 1 -> 2 blocks at half of 128 steps):
    it finishes; ASHA stops trials, each only at a rung after its growth (its last row within
    one step past the growth's planned FLOPs plus a rung), and Optuna hears them as PRUNED."""
    import optuna

    from progtune.results import read_curves, read_trials
    from tests.test_search_e2e import search

    out = search(
        tmp_path, "--space", "smoke", "--preset", "tiny", "--num-samples", "6", "--name", "g",
        "--scheduler", "asha-after-growth", "--search-seed", "3", "budget.tokens=32768",
        "--max-concurrent", "2", timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    res = tmp_path / "res" / "g"
    trials, curves = read_trials(res / "trials.parquet"), read_curves(res / "curves.parquet")
    runs = trials[trials.role == "search"]
    assert len(runs) == 6
    stopped = runs[runs.status == "stopped"]
    assert len(stopped) >= 1, runs[["trial_id", "status", "final_eval_loss"]]
    ref = trials[trials.role == "reference"].iloc[0]
    rungs = [ref.total_flops / 8, ref.total_flops / 4, ref.total_flops / 2, ref.total_flops]
    step = ref.total_flops / ref.steps  # a step at full depth: the most one step costs
    for tid in stopped.trial_id:
        curve = curves[curves.trial_id == tid]
        last = curve.iloc[curve.flops.argmax()]
        assert last.stage == 1 and 16_384 < last.tokens < 32_768, (tid, last.to_dict())
        marks = list(runs[runs.trial_id == tid]["eval.at_flops"].iloc[0])
        assert any(m <= last.flops < m + step for m in marks[:3]), (tid, last.flops, marks)
    for trial in runs.to_dict("records"):  # each evaluates at its own rungs, after its growth
        marks = list(trial["eval.at_flops"])
        start = marks[0] - rungs[0]  # the planned FLOPs at its growth (after step 64 of 128)
        assert marks == pytest.approx([start + m for m in rungs], rel=1e-12)
        grown = curves[(curves.trial_id == trial["trial_id"]) & (curves.step == 64)].flops.iloc[0]
        assert start == pytest.approx(grown, rel=0.05)  # planned at the sampler's mean depth
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(res / "optuna.journal"))
    )
    states = [t.state.name for t in optuna.load_study(study_name="g", storage=storage).trials]
    assert states.count("PRUNED") == len(stopped)
