"""bench/apollo_vs_scratch.py: statistics, the scaled Apollo schedule, a tiny study end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from bench_scripts import BENCH, load_bench

from progtune.config import resolve
from progtune.errors import ProgtuneError
from progtune.results import saving

_load = load_bench


stats = _load("study_stats")
study = _load("apollo_vs_scratch")


def test_mean_interval_uses_student_t():
    s = stats.mean_interval([0.4, 0.5, 0.6])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.5)
    assert s["sd"] == pytest.approx(0.1)
    half = 4.303 * 0.1 / math.sqrt(3)  # t(0.975, 2)
    assert (s["lo"], s["hi"]) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    one = stats.mean_interval([0.3, None, float("nan")])
    assert one["n"] == 1 and one["lo"] is None and one["sd"] is None
    assert stats.mean_interval([])["mean"] is None


def test_equal_loss_flops_interpolates_log_flops_and_bounds_outside():
    points = [(1e9, 4.0), (2e9, 3.5), (4e9, 3.2)]
    f, kind = stats.equal_loss_flops(points, 3.75)  # half-way between the first two losses
    assert kind == "interpolated" and f == pytest.approx(math.sqrt(2) * 1e9)
    assert stats.equal_loss_flops(points, 3.2) == (pytest.approx(4e9), "interpolated")
    assert stats.equal_loss_flops(points, 3.0) == (4e9, "beyond")  # scratch needs more than 4e9
    assert stats.equal_loss_flops(points, 4.5) == (1e9, "short")
    assert stats.equal_loss_flops([], 3.0) == (None, "none")
    # the study's savings use the product's convention (progtune.results.saving)
    assert saving(0.6, 1.0) == pytest.approx(0.4) and saving(1.0, None) is None


def test_paired_se_cancels_what_both_runs_share():
    content = [3.0, 5.5, 4.2, 6.1]  # batches differ a lot in difficulty
    a = {"batch_losses": [c + 0.1 for c in content], "batch_weights": [10] * 4}
    b = {"batch_losses": content, "batch_weights": [10] * 4}
    assert stats.paired_se(a, b) == pytest.approx(0.0, abs=1e-12)  # a constant shift: no noise
    a["batch_losses"] = [3.2, 5.5, 4.4, 6.1]  # differences 0.2, 0, 0.2, 0: sd 0.11547, n 4
    assert stats.paired_se(a, b) == pytest.approx(0.11547 / 2, rel=1e-4)
    assert stats.paired_se({"loss": 1.0}, b) is None


@pytest.mark.parametrize(
    ("n_layers", "stages", "bounds"),
    [
        (12, [1, 3, 6, 12], [0.1, 0.2, 0.5]),  # the short-run reference itself
        (8, [1, 2, 4, 8], [0.1, 0.2, 0.5]),
        (4, [1, 2, 4], [0.2, 0.5]),  # L/4 = 1: the first two stages merge
        (2, [1, 2], [0.5]),
    ],
)
def test_apollo_stages_scale_the_short_run_reference(n_layers, stages, bounds):
    assert study.apollo_stages(n_layers) == (stages, bounds)


def test_arms_share_scratch_lr_and_differ_only_where_named():
    best = {"lr.peak": 3e-3, "lr.warmup_fraction": 0.1}
    arms = study.arms(4, best, {}, None)
    assert arms["scratch"]["stages.unique_layers"] == [4]
    assert arms["apollo-ref"]["lr.warmup_fraction"] == study.REFERENCE_WARMUP
    assert arms["apollo"]["lr.peak"] == 3e-3 and arms["apollo-half-lr"]["lr.peak"] == 1.5e-3
    assert arms["interp-none"]["sampling.strategy"] == "none"
    assert arms["stacking-none"]["growth.operator"] == "stacking"
    same = study.arms(4, {"lr.peak": 3e-3, "lr.warmup_fraction": 0.025}, {}, None)
    assert "apollo" not in same  # identical to apollo-ref at the reference warmup
    for overrides in arms.values():  # every arm is a valid config
        resolve("cpu-small", overrides=overrides)


def test_searched_config_takes_the_best_trial_and_refuses_another_model(tmp_path):
    from progtune.results import write_trials
    from progtune.summary import trial_row

    def row(trial_id, lr, objective, **knobs):
        cfg = resolve("tiny", overrides={"lr.peak": lr, "seed": 0, **knobs})
        result = SimpleNamespace(
            status="completed", final_eval_loss=4.0, curve=[], total_flops=1e9,
            total_tokens=16384, total_wall_s=1.0, eval_wall_s=0.1, checkpoint_wall_s=0.0,
            steps=64, data_fingerprint="x", device="cpu", threads=1,
        )  # fmt: skip
        r = trial_row(cfg, result, experiment="e", trial_id=trial_id, role="search")
        return {**r, "objective": objective}

    write_trials(
        [row("a", 1e-3, 5e9), row("b", 2e-3, 2e9, **{"sampling.strategy": "none"})],
        tmp_path / "trials.parquet",
    )
    base = dict(study.STUDY_OVERRIDES)
    from progtune.config import flatten

    knobs, desc = study.searched_config(str(tmp_path), flatten(resolve("tiny", overrides=base)))
    assert knobs["lr.peak"] == 2e-3 and knobs["sampling.strategy"] == "none"
    assert "seed" not in knobs and "budget.tokens" not in knobs
    assert not any(k.startswith(("eval.", "runtime.")) for k in knobs)
    assert "lr.peak=0.002" in desc
    other = flatten(resolve("tiny", overrides={"model.d_model": 64, "model.n_heads": 2}))
    with pytest.raises(ProgtuneError, match=r"model\.d_model"):
        study.searched_config(str(tmp_path), other)


def summary_noise_ok(out: Path) -> bool:
    noise = json.loads((out / "summary.json").read_text())["noise"]
    return noise["paired_comparisons"] > 0 and noise["paired_difference_se_mean"] > 0


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / "apollo_vs_scratch.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


@pytest.mark.slow
def test_tiny_study_end_to_end_resumes_and_refuses_other_settings(tmp_path, tiny_cache_dir):
    out = tmp_path / "study"
    args = ["--preset", "tiny", "--out", str(out), "--workers", "1", "--seeds", "1,2",
            "--lrs", "3e-3,6e-3", "--warmups", "0.1", "--budgets", "0.5", "--scratch-budgets",
            "", "--final-eval-tokens", "4096", f"data.cache_dir={tiny_cache_dir}"]  # fmt: skip
    first = _run(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    # 2 LRs on seed 1, scratch on both seeds, 7 arms x 2 seeds, scratch + interp-none at 0.5x x 2
    assert len(runs) == 2 + 2 + 7 * 2 + 2 * 2
    assert all(r["status"] == "completed" and r["final"]["loss"] > 0 for r in runs)
    assert all(r["final"]["tokens"] > 0 and r["final"]["se"] > 0 for r in runs)
    assert summary_noise_ok(out)
    summary = json.loads((out / "summary.json").read_text())
    main = summary["main"]
    assert set(main) == {"scratch", "apollo-ref", "apollo", "interp-none", "stacking-none",
                         "apollo-reset", "apollo-rewarm", "apollo-half-lr"}  # fmt: skip
    assert all(c["n"] == 2 for c in main.values())
    assert main["scratch"]["reached"] == 2  # scratch reaches its own final loss
    for arm in ("apollo-ref", "interp-none"):  # progressive runs cost less than scratch
        assert 0.5 < main[arm]["total_flops_ratio"]["mean"] < 1.0
    assert set(summary["sweep"]) == {"interp-none@0.5x", "interp-none@1x"}
    by_lr = {g["lr"]: g["final_loss"] for g in summary["lr_sweep"]}
    best_lr = min(by_lr, key=by_lr.get)
    scratch_runs = [r for r in runs if r["arm"] == "scratch"]
    assert {r["overrides"]["lr.peak"] for r in scratch_runs} == {best_lr}
    text = (out / "study.md").read_text()
    assert "| apollo-ref | " in text and "Budget sweep" in text

    again = _run(args, tmp_path)  # everything done: nothing is trained again
    assert again.returncode == 0, again.stderr[-3000:]
    assert "runs to do" not in again.stdout and len(list((out / "runs").glob("*.json"))) == 22

    other = _run([*args[:-1], "--warmups", "0.025", args[-1]], tmp_path)
    assert other.returncode == 2
    assert other.stderr.strip().count("\n") == 0 and "--out" in other.stderr
    assert "Traceback" not in other.stderr


def test_bad_searched_folder_is_one_line_exit_2(tmp_path):
    out = _run(["--preset", "tiny", "--out", str(tmp_path / "o"), "--searched",
                str(tmp_path / "missing")], tmp_path)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--searched" in out.stderr
    assert not (tmp_path / "o").exists()
