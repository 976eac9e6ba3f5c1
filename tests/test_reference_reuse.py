"""A matching finished reference run in the same storage is reused, not trained again."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from progtune import __version__
from progtune.config import config_hash, resolve, with_overrides
from progtune.errors import ProgtuneError
from progtune.reference_reuse import ReferenceKey, find_reference
from progtune.results import read_trials
from progtune.search_state import SearchState, reference_config


def _write_experiment(storage: Path, name: str, cfg, status="completed", **final) -> None:
    """An experiment whose only run is a reference run with the given summary."""
    state = SearchState(str(storage / name), name, 256, None)
    state.start("reference", "reference", cfg, 1e9, dt.datetime.now(dt.UTC))
    state.add_row("reference", {"step": 0, "tokens": 0, "flops": 0.0, "eval_loss": 5.0})
    state.add_row("reference", {"step": 8, "tokens": 512, "flops": 1e9, "eval_loss": 4.0})
    summary = dict(final_eval_loss=4.0, total_flops=1e9, device="cpu", threads=1)
    summary.update(precision="fp32", data_fingerprint="fp-1", **final)
    state.finish("reference", status, summary)
    state.write(force=True)


def _settings(storage: Path, base, name="new", reference=None):
    exp_uri = f"{storage}/{name}"
    return SimpleNamespace(
        base=base, storage=str(storage), exp_uri=exp_uri, reference=reference, cpus_per_trial=1
    )


@pytest.fixture
def base():
    return resolve("tiny")


def _key(base, **changes) -> ReferenceKey:
    key = ReferenceKey(config_hash(reference_config(base)), 1, "cpu", "fp32", "fp-1", __version__)
    return replace(key, **changes)


def test_a_matching_reference_is_found_and_every_key_field_can_veto_it(tmp_path, base):
    _write_experiment(tmp_path, "old", reference_config(base))
    assert find_reference(_settings(tmp_path, base), _key(base)) == f"{tmp_path}/old"
    other_seed = config_hash(with_overrides(reference_config(base), {"seed": 99}))
    for change in (
        {"config_hash": other_seed},
        {"threads": 2},
        {"device_type": "cuda"},
        {"precision": "bf16"},
        {"data_fingerprint": "fp-2"},
        {"progtune_version": "0.0.0"},
        {"workers": 2},  # a row without a worker count was one process
        {"compile": True},
    ):
        assert find_reference(_settings(tmp_path, base), _key(base, **change)) is None, change
    # A key field the driver cannot know before the cluster runs it (None) matches any value.
    assert find_reference(_settings(tmp_path, base), _key(base, device_type=None)) is not None


def test_a_reference_trained_on_workers_is_reused_only_by_as_many_workers(tmp_path, base):
    from progtune.reference_reuse import expected_key

    _write_experiment(tmp_path, "two", reference_config(base), workers=2)
    assert find_reference(_settings(tmp_path, base), _key(base)) is None
    assert find_reference(_settings(tmp_path, base), _key(base, workers=2)) == f"{tmp_path}/two"
    # --gpus-per-trial 2 means 2 workers of one GPU each (search_settings.trial_layout)
    settings = SimpleNamespace(base=base, cpus_per_trial=1, workers_per_trial=1,
                               gpus_per_trial=2, address=None)  # fmt: skip
    key = expected_key(settings, SimpleNamespace(fingerprint="fp-1"))
    assert (key.workers, key.device_type) == (2, "cuda")


def test_unfinished_references_and_the_search_itself_are_never_reused(tmp_path, base):
    _write_experiment(tmp_path, "failed", reference_config(base), status="failed")
    _write_experiment(tmp_path, "new", reference_config(base))  # this search's own folder
    assert find_reference(_settings(tmp_path, base, name="new"), _key(base)) is None


def test_a_named_reference_that_does_not_match_is_bad_input(tmp_path, base):
    _write_experiment(tmp_path, "old", reference_config(base), threads=4)
    with pytest.raises(ProgtuneError, match=r"--reference old: .*threads 4 != 1"):
        find_reference(_settings(tmp_path, base, reference="old"), _key(base))
    with pytest.raises(ProgtuneError, match=r"--reference nowhere: .*no .*results"):
        find_reference(_settings(tmp_path, base, reference="nowhere"), _key(base))


def _search(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROGTUNE_CACHE": str(tmp / "cache")}
    cmd = [sys.executable, "-m", "progtune.cli", "search", "--storage", str(tmp / "res")]
    cmd += ["--space", "smoke", "--preset", "tiny", "--num-samples", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env, cwd=tmp)


@pytest.mark.slow
def test_a_second_search_reuses_the_first_ones_reference_run(tmp_path):
    first = _search(tmp_path, "--name", "first")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "reference run (from scratch, full depth) started" in first.stdout

    second = _search(tmp_path, "--name", "second")
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"reusing reference run from {tmp_path / 'res' / 'first'}" in second.stdout
    assert "reference run (from scratch, full depth) started" not in second.stdout
    ref = [read_trials(tmp_path / "res" / n / "trials.parquet") for n in ("first", "second")]
    ref = [t[t.role == "reference"].iloc[0] for t in ref]
    assert ref[1]["final_eval_loss"] == ref[0]["final_eval_loss"]
    assert ref[1]["target_loss"] == ref[0]["final_eval_loss"]

    # Named explicitly but trained with another seed: one line, exit 2, nothing written.
    third = _search(tmp_path, "--name", "third", "--reference", "first", "seed=5")
    assert third.returncode == 2
    assert third.stderr.strip().count("\n") == 0 and "config_hash" in third.stderr
    assert not (tmp_path / "res" / "third").exists()
