"""`progtune confirm` (top K on fresh seeds, role confirm) and `progtune export`, tiny search."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from progtune.results import read_trials

pytestmark = pytest.mark.slow


def cli(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROGTUNE_CACHE": str(tmp / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "progtune.cli", *args],
        capture_output=True, text=True, timeout=420, env=env, cwd=tmp,
    )  # fmt: skip


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("confirm")
    out = cli(tmp, "search", "--space", "smoke", "--preset", "tiny", "--num-samples", "3",
              "--storage", str(tmp / "res"), "--name", "c")  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return tmp, tmp / "res" / "c"


def same_config(trials, source: dict):
    """Rows that ran `source`'s configuration (the smoke space varies these two knobs)."""
    return trials[
        (trials["lr.peak"] == source["lr.peak"])
        & (trials["sampling.strategy"] == source["sampling.strategy"])
    ]


def test_confirm_reruns_the_top_configs_on_fresh_seeds(experiment):
    tmp, exp = experiment
    before = read_trials(exp / "trials.parquet")
    top2 = before[before.role == "search"].sort_values("objective").head(2)
    out = cli(tmp, "confirm", str(exp), "--top", "2", "--seeds", "2")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    after = read_trials(exp / "trials.parquet")
    confirm = after[after.role == "confirm"]
    assert len(confirm) == 4 and set(confirm.status) == {"completed"}
    assert sorted(set(confirm.seed)) == [1, 2]  # fresh: the search used seed 0
    assert set(confirm["lr.peak"]) == set(top2["lr.peak"])
    # The earlier rows are kept unchanged; the reference was not re-run.
    assert (after[after.role != "confirm"].trial_id.tolist()) == before.trial_id.tolist()
    assert (confirm.target_loss == before.target_loss.iloc[0]).all()
    # One summary line per configuration, best first, each with its own seeds' count and mean.
    lines = out.stdout.splitlines()
    reached_any, positions = 0, []
    for source in top2.to_dict("records"):
        found = [i for i, line in enumerate(lines) if line.startswith(f"{source['trial_id']}: ")]
        assert len(found) == 1, out.stdout
        positions.append(found[0])
        runs = same_config(confirm, source)
        assert sorted(runs.seed) == [1, 2]
        reached = runs.flops_to_target.dropna()
        reached_any += len(reached)
        mean = f"{reached.mean():.3e}" if len(reached) else "-"
        assert lines[found[0]].split()[-2:] == [f"{len(reached)}/2", mean], lines[found[0]]
    assert positions == sorted(positions)  # the best configuration first
    assert reached_any >= 1  # the counts are not all zero


def test_export_best_trial_loads_with_auto_classes(experiment, tmp_path):
    tmp, exp = experiment
    trials = read_trials(exp / "trials.parquet")
    done = trials[trials.role.isin(["search", "confirm"]) & (trials.status == "completed")]
    best = done.sort_values("objective").iloc[0]
    assert best.objective < done.objective.max()  # the choice matters
    out = cli(tmp, "export", str(exp), "--trial", "best", "--out", str(tmp_path / "model"))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"exported trial {best.trial_id} " in out.stdout  # the lowest objective
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    ids = tok("def f(x):\n    return x", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == model.config.vocab_size
    assert model.config.n_layer == 2
    # The same weights as that trial exported by id.
    by_id = cli(tmp, "export", str(exp), "--trial", best.trial_id, "--out", str(tmp_path / "m2"))
    assert by_id.returncode == 0, by_id.stdout[-2000:] + by_id.stderr[-2000:]
    named = AutoModelForCausalLM.from_pretrained(tmp_path / "m2").state_dict()
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, named[key]), key


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--trial", "nope"], "no trial 'nope'"),
        (["--trial", "reference"], "reference run keeps no checkpoint"),
    ],
)
def test_export_bad_trial(experiment, tmp_path, args, fragment):
    tmp, exp = experiment
    out = cli(tmp, "export", str(exp), *args, "--out", str(tmp_path / "m"))
    assert out.returncode == 2 and fragment in out.stderr
    assert not (tmp_path / "m").exists()
