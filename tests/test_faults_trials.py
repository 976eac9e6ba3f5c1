"""Faults inside one trial (issue 5), proven with real processes on this machine - no mocks.

1. a trial process SIGKILLed mid-training is retried from its last checkpoint; its curve has no
   gaps or duplicates and equals an uninterrupted `progtune train` of the same config bitwise;
2. a trial diverging (absurd learning rate) ends `diverged`, Optuna gets the documented finite
   surrogate, the search goes on;
3. a reader polling trials.parquet / curves.parquet throughout that search never sees a partial
   file (progtune's readers and plain pandas through one open file).
"""

from __future__ import annotations

import math
import os
import signal
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from search_processes import (
    Driver,
    assert_every_trial_once,
    expected_steps,
    live_trials,
    plain,
    prepared_vocab_size,
    result_lines,
    run_cli,
    surrogate,
    wait_for,
)

from progtune.config import KNOB_TYPES, flatten, resolve
from progtune.errors import ResultsError
from progtune.results import read_curves, read_parquet_one_open, read_trials

pytestmark = pytest.mark.slow

CURVE_COLUMNS = ("step", "tokens", "flops", "stage", "unique_layers", "mean_depth", "lr")
CURVE_COLUMNS += ("train_loss", "eval_loss")  # everything but the wall-clock columns


def _text(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _knob_overrides(row: pd.Series) -> list[str]:
    """KEY=VALUE for every knob of a trials.parquet row that differs from the tiny preset."""
    base = flatten(resolve("tiny"))
    out = []
    for knob in KNOB_TYPES:
        if knob.startswith("runtime.") or knob == "data.cache_dir":
            continue
        value = plain(row[knob])
        if value is not None and value != base[knob]:
            out.append(f"{knob}={_text(value)}")
    return out


# ---------------------------------------------------------------------------- 1. trial SIGKILL
def test_trial_sigkill_is_retried_from_checkpoint_and_equals_an_uninterrupted_run(
    tmp_path, drivers
):
    knobs = ["seed=0", "budget.tokens=262144", "eval.points=16"]  # ~1000 steps, a row per 64
    d = drivers(tmp_path, "--space", "smoke", "--preset", "tiny", "--num-samples", "1",
                "--storage", str(tmp_path / "res"), "--name", "k", "--cpus-per-trial", "1",
                *knobs)  # fmt: skip
    exp = tmp_path / "res" / "k"

    def trial_training():
        live = live_trials(exp, 512)  # of 1024 steps
        return live and (next(iter(live.values()))[-1]["pid"], d.trial_workers())

    reporting, workers = wait_for(trial_training, 300, d, "the trial's first curve rows")
    assert workers == [reporting], (workers, reporting)
    killed = reporting
    os.kill(killed, signal.SIGKILL)
    assert d.wait(600) == 0, d.shown()

    trials = assert_every_trial_once(exp, 1)
    trial = trials[trials["role"] == "search"].iloc[0]
    tid = trial["trial_id"]
    # The kill really hit this trial, and its retry started from a checkpoint, not from step 0.
    lines = result_lines(exp, tid)
    before = [r for r in lines if r["pid"] == killed]
    after = [r for r in lines if r["pid"] != killed]
    assert before and after, {r["pid"] for r in lines}
    assert after[0]["resumed_from"] > 0, after[0]
    assert not before[-1].get("final") and after[-1]["final"]

    curves = read_curves(exp / "curves.parquet")
    curve = curves[curves["trial_id"] == tid].reset_index(drop=True)
    assert list(curve["step"]) == expected_steps(**{"budget.tokens": 262144, "eval.points": 16})

    # The same config and seed, uninterrupted, on the same thread count.
    overrides = _knob_overrides(trial)
    assert "lr.peak" in " ".join(overrides)  # the searched knobs came from the trial's row
    ref = run_cli(tmp_path, "train", "--preset", "tiny", "--out", str(tmp_path / "plain"),
                  "--quiet", *overrides, "runtime.threads=1")  # fmt: skip
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-2000:]
    plain_curves = read_curves(tmp_path / "plain" / "curves.parquet")
    for col in CURVE_COLUMNS:
        pd.testing.assert_series_equal(curve[col], plain_curves[col], check_exact=True, obj=col)
    plain_row = read_trials(tmp_path / "plain" / "trials.parquet").iloc[0]
    assert plain_row["config_hash"] == trial["config_hash"]
    for col in ("final_eval_loss", "total_flops", "total_tokens", "steps"):
        assert trial[col] == plain_row[col], col


# ---------------------------------------------------------------------------- 2 + 3. divergence,
# and a reader polling the Parquet files while that search runs
_DIVERGING_SPACE = '''"""Trial 0: an absurd learning rate (diverges); the others: sane."""


def define(trial):
    if trial.number == 0:
        return {"lr.peak": 1e4}
    return {"lr.peak": trial.suggest_float("lr.peak", 1e-3, 3e-3, log=True)}
'''


class Reader(threading.Thread):
    """Reads trials.parquet and curves.parquet as fast as it can until stopped.

    Before a file's first write, "not there yet" is fine; after it, every read must succeed.
    """

    def __init__(self, exp: Path):
        super().__init__(daemon=True)
        self.exp = exp
        self.done = threading.Event()
        self.reads: dict[str, int] = defaultdict(int)
        self.errors: list[str] = []
        self.trial_counts: list[int] = []

    def _one(self, key: str, read: Callable, path: Path) -> Any:
        try:
            out = read(path)
        except (ResultsError, FileNotFoundError) as exc:
            if self.reads[key] == 0 and ("no " in str(exc) or isinstance(exc, FileNotFoundError)):
                return None  # not written yet
            self.errors.append(f"{key}: {type(exc).__name__}: {exc}")
            return None
        except Exception as exc:
            self.errors.append(f"{key}: {type(exc).__name__}: {exc}")
            return None
        self.reads[key] += 1
        return out

    def run(self) -> None:
        trials, curves = self.exp / "trials.parquet", self.exp / "curves.parquet"
        while not self.done.is_set():
            t = self._one("read_trials", read_trials, trials)
            if t is not None:
                self.trial_counts.append(len(t))
            self._one("read_curves", read_curves, curves)
            # pandas through one open file: pd.read_parquet(path) opens a local path twice and
            # can mix two versions (README, bench/parquet_reader_race.py).
            self._one("pd.read_parquet trials", read_parquet_one_open, trials)
            self._one("pd.read_parquet curves", read_parquet_one_open, curves)


@pytest.fixture(scope="module")
def diverging(tmp_path_factory):
    """A search whose trial 0 diverges, with a Reader polling its results throughout."""
    tmp = tmp_path_factory.mktemp("diverge")
    (tmp / "diverging.py").write_text(_DIVERGING_SPACE)
    exp = tmp / "res" / "dv"
    reader = Reader(exp)
    reader.start()
    d = Driver(tmp, ["--space", str(tmp / "diverging.py"), "--preset", "tiny",
                     "--num-samples", "2", "--cpus-per-trial", "1",
                     "--storage", str(tmp / "res"), "--name", "dv"])  # fmt: skip
    try:
        rc = d.wait(600)
    finally:
        reader.done.set()
        reader.join(60)
        d.stop()
    return tmp, exp, rc, d, reader


def test_diverged_trial_is_recorded_and_the_search_goes_on(diverging):
    tmp, exp, rc, d, _ = diverging
    # A diverged trial is a result (a bad configuration), not a failure of the search: exit 0.
    assert rc == 0, d.shown()
    trials = read_trials(exp / "trials.parquet")
    assert trials["trial_id"].is_unique and len(trials) == 3
    search = trials[trials["role"] == "search"]
    bad = search[search["lr.peak"] == 1e4]
    good = search[search["lr.peak"] != 1e4]
    assert len(bad) == 1 and len(good) == 1
    bad = bad.iloc[0]
    assert bad["status"] == "diverged"
    assert set(good["status"]) == {"completed"}
    assert trials[trials["role"] == "reference"]["status"].iloc[0] == "completed"
    assert pd.isna(bad["final_eval_loss"]) and pd.isna(bad["flops_to_target"])
    # The surrogate: finite, and above a whole from-scratch budget and every completed trial.
    ref = trials[trials["role"] == "reference"].iloc[0]
    value = float(bad["objective"])
    assert math.isfinite(value)
    assert value > ref["total_flops"] and value > good["objective"].max()
    curves = read_curves(exp / "curves.parquet")
    curve = curves[curves["trial_id"] == bad["trial_id"]]
    best = curve["eval_loss"].dropna().min()  # the finite evaluations (step 0 at least)
    assert value >= ref["total_flops"] * (best / bad["target_loss"]) ** 10 * (1 - 1e-9)
    assert curve["eval_loss"].isna().iloc[-1], "the last row is the non-finite evaluation"
    # ... and exactly the documented formula (README), not merely some large penalty.
    expected = surrogate(trials, curves, bad["trial_id"], prepared_vocab_size(tmp))
    assert value == pytest.approx(expected, rel=1e-12), (value, expected)

    # Optuna was told COMPLETE with that finite value.
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal"))
    )
    study = optuna.load_study(study_name="dv", storage=storage)
    first = next(t for t in study.trials if t.number == 0)
    assert first.state.name == "COMPLETE" and first.value == pytest.approx(value, rel=1e-12)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]

    # The report shows it.
    report = run_cli(tmp, "report", str(exp), timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "diverged" in report.stdout, report.stdout[-3000:]


def test_reader_never_sees_a_partial_results_file(diverging):
    _, _, rc, d, reader = diverging
    assert rc == 0, d.shown()
    assert not reader.errors, reader.errors[:5]
    for key in ("read_trials", "read_curves", "pd.read_parquet trials", "pd.read_parquet curves"):
        assert reader.reads[key] >= 20, dict(reader.reads)  # it really read during the search
    assert reader.trial_counts == sorted(reader.trial_counts), "a trial row disappeared"
    assert reader.trial_counts[-1] == 3
