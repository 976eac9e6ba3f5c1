"""End-to-end: real `progtune search` processes on a private local Ray (127.0.0.1), tiny preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from progtune.config import KNOB_TYPES
from progtune.results import CURVE_FIELDS, read_curves, read_trials

pytestmark = pytest.mark.slow


def search(tmp_path: Path, *args: str, timeout: int = 420) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROGTUNE_CACHE": str(tmp_path / "cache"), "RAY_ADDRESS": "10.9.9.9:1"}
    return subprocess.run(
        [sys.executable, "-m", "progtune.cli", "search", "--storage", str(tmp_path / "res"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=tmp_path,
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke search shared by the checks below (a stray RAY_ADDRESS must be ignored)."""
    tmp = tmp_path_factory.mktemp("smoke")
    out = search(tmp, "--space", "smoke", "--preset", "tiny", "--num-samples", "3", "--name", "e2e")
    return tmp, out


def _index(lines: list[str], prefix: str) -> int:
    """Position of the first line starting with `prefix` (fails the test when there is none)."""
    found = [i for i, line in enumerate(lines) if line.startswith(prefix)]
    assert found, f"no line starts with {prefix!r}"
    return found[0]


def test_smoke_search_runs_and_ranks(smoke):
    tmp, out = smoke
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    steps = ["data: ", "experiment e2e: ", "local Ray on 127.0.0.1", "reference run ",
             "target loss: ", "rank trial ", "results: "]  # fmt: skip
    at = [_index(lines, prefix) for prefix in steps]
    assert at == sorted(at), dict(zip(steps, at, strict=True))  # printed in this order
    trials = read_trials(tmp / "res" / "e2e" / "trials.parquet")
    ref = trials[trials["role"] == "reference"].iloc[0]
    assert lines[at[4]] == f"target loss: {ref['final_eval_loss']:.4f}"
    # The ranking: every search trial once, those that reached the target by FLOPs to target,
    # then the others by final loss; each line's figures are its trial's row.
    runs = trials[trials["role"] == "search"].assign(missed=lambda t: t["flops_to_target"].isna())
    expected = runs.sort_values(["missed", "flops_to_target", "final_eval_loss"])
    ranked = [line.split() for line in lines[at[5] + 1 : at[6]] if line.strip()]
    assert [r[1] for r in ranked] == list(expected["trial_id"])
    assert [int(r[0]) for r in ranked] == list(range(1, len(expected) + 1))
    for r, row in zip(ranked, expected.to_dict("records"), strict=True):
        assert r[2] == row["status"]
        if row["flops_to_target"] is None:
            assert r[3:5] == ["not", "reached"]
        else:
            assert r[3:5] == [f"{row['flops_to_target']:.3e}", f"{row['saving']:.1%}"]
        assert f"{row['final_eval_loss']:.4f}" in r


def test_trials_parquet_column_by_column(smoke):
    tmp, _ = smoke
    trials = read_trials(tmp / "res" / "e2e" / "trials.parquet")
    assert len(trials) == 4  # the reference run + 3 trials, each exactly once
    assert trials["trial_id"].is_unique
    assert sorted(trials["role"]) == ["reference", "search", "search", "search"]
    assert set(trials["status"]) == {"completed"}
    for knob in KNOB_TYPES:
        assert knob in trials.columns
    assert (trials["stages.unique_layers_str"] != "").all()
    ref = trials[trials["role"] == "reference"].iloc[0]
    assert ref["stages.unique_layers_str"] == "2" and ref["sampling.strategy"] == "full"
    # The default target is the reference run's final held-out loss.
    assert (trials["target_loss"] == ref["final_eval_loss"]).all()
    assert ref["saving"] == pytest.approx(0.0) and ref["speedup"] == pytest.approx(0.0)
    search_rows = trials[trials["role"] == "search"]
    assert set(search_rows["sampling.strategy"]) <= {"lvps", "none"}
    assert search_rows["lr.peak"].between(1e-3, 1e-2).all()
    for col in ("final_eval_loss", "total_flops", "total_tokens", "total_wall_s", "objective"):
        assert trials[col].notna().all(), col
    # trial_wall_s: the whole slot as the driver saw it - training, evaluation, checkpoints and
    # more (start-up, result uploads), so never less than the three measured parts.
    parts = trials["total_wall_s"] + trials["eval_wall_s"] + trials["checkpoint_wall_s"]
    assert trials["trial_wall_s"].notna().all()
    assert (trials["trial_wall_s"] >= parts).all(), trials[["trial_id", "trial_wall_s"]]
    reached = trials[trials["flops_to_target"].notna()]
    assert (
        (1 - reached["flops_to_target"] / ref["flops_to_target"]) - reached["saving"]
    ).abs().max() < 1e-9
    assert (trials["total_tokens"] == 16_384).all()
    for col in (
        "progtune_version",
        "git_sha",
        "config_hash",
        "data_fingerprint",
        "torch_version",
        "ray_version",
        "optuna_version",
        "device",
    ):
        assert trials[col].notna().all(), col
    assert trials["data_fingerprint"].nunique() == 1  # every trial trained on the same tokens


def test_curves_parquet_has_no_gaps_or_duplicates(smoke):
    tmp, _ = smoke
    curves = read_curves(tmp / "res" / "e2e" / "curves.parquet")
    assert [f.name for f in CURVE_FIELDS] == list(curves.columns)
    trials = read_trials(tmp / "res" / "e2e" / "trials.parquet")
    assert set(curves["trial_id"]) == set(trials["trial_id"])
    for _tid, c in curves.groupby("trial_id"):
        assert c["step"].is_unique and c["step"].is_monotonic_increasing
        assert list(c["step"]) == [0, 16, 32, 48, 64]
        assert c["flops"].is_monotonic_increasing
    # Also readable by plain pandas.
    assert len(pd.read_parquet(tmp / "res" / "e2e" / "curves.parquet")) == len(curves)


def test_optuna_journal_holds_the_study(smoke):
    import optuna

    tmp, _ = smoke
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp / "res" / "e2e" / "optuna.journal"))
    )
    study = optuna.load_study(study_name="e2e", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE"] * 3
    trials = read_trials(tmp / "res" / "e2e" / "trials.parquet")
    values = sorted(t.value for t in study.trials)
    assert values == pytest.approx(sorted(trials[trials["role"] == "search"]["objective"]))


def test_resume_reuses_the_reference_and_adds_nothing(smoke):
    tmp, _ = smoke
    before = read_trials(tmp / "res" / "e2e" / "trials.parquet")
    again = search(tmp, "--resume", "--name", "e2e")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "reusing the finished reference run" in again.stdout
    after = read_trials(tmp / "res" / "e2e" / "trials.parquet")
    assert sorted(after["trial_id"]) == sorted(before["trial_id"])
    saved = json.loads((tmp / "res" / "e2e" / "search.json").read_text())
    assert saved["num_samples"] == 3


def test_existing_experiment_is_not_overwritten(smoke):
    tmp, _ = smoke
    again = search(tmp, "--space", "smoke", "--preset", "tiny", "--name", "e2e")
    assert again.returncode == 2
    assert "already exists" in again.stderr


def test_changed_space_file_is_refused_on_resume(tmp_path):
    space = tmp_path / "myspace.py"
    space.write_text(
        "def define(trial):\n    return {'lr.peak': trial.suggest_float('lr.peak', 1e-3, 3e-3)}\n"
    )
    first = search(
        tmp_path,
        "--space",
        str(space),
        "--preset",
        "tiny",
        "--num-samples",
        "1",
        "--name",
        "u",
        "--target-loss",
        "5.0",
    )
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    trials = read_trials(tmp_path / "res" / "u" / "trials.parquet")
    assert (trials["target_loss"] == 5.0).all()
    space.write_text(space.read_text() + "# edited\n")
    again = search(tmp_path, "--resume", "--name", "u")
    assert again.returncode == 2 and "changed since experiment" in again.stderr
