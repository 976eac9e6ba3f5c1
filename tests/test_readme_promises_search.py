"""README promises of `progtune search` that need a real (tiny) search: fixed-point spaces on
seeds seed, seed+1, ...; --max-failures as a limit; --time-budget; the --gpus-per-trial default."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from progtune.results import read_trials
from tests.test_search_e2e import search

pytestmark = pytest.mark.slow

TWO_POINTS = '''"""two points: growth with and without depth sampling (a fixed-point space)."""


def points(base):
    return [{"sampling.strategy": "none"}, {"sampling.strategy": "lvps"}]


def define(trial):
    return {"sampling.strategy": trial.suggest_categorical("sampling.strategy", ["none", "lvps"])}
'''


def test_fixed_points_run_n_over_points_times_on_consecutive_seeds(tmp_path):
    """README: a fixed-point space runs each point N / points times on seeds seed, seed+1, ...
    (`seed` as the user set it: here pinned on the command line)."""
    (tmp_path / "two_points.py").write_text(TWO_POINTS)
    out = search(
        tmp_path, "--space", str(tmp_path / "two_points.py"), "--preset", "tiny",
        "--num-samples", "4", "--name", "p", "seed=3", "budget.tokens=8192",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials = read_trials(tmp_path / "res" / "p" / "trials.parquet")
    runs = trials[trials.role == "search"]
    assert (runs.status == "completed").all()
    ran = sorted(zip(runs["sampling.strategy"], runs["seed"], strict=True))
    assert ran == [("lvps", 3), ("lvps", 4), ("none", 3), ("none", 4)]
    assert trials[trials.role == "reference"].seed.tolist() == [3]


FIRST_TRIAL_FAILS = '''"""first trial fails: its boundaries fall on one step, which training
refuses (after the config was accepted); the trials after it train."""


def define(trial):
    if trial.number == 0:
        return {"model.n_layers": 4, "stages.unique_layers": [1, 2, 4],
                "stages.boundaries": [0.5, 0.505]}
    return {"lr.peak": trial.suggest_float("lr.peak", 2e-3, 4e-3)}
'''


def test_max_failures_bounds_the_retries_of_a_failing_trial(tmp_path):
    """README: a failed trial is retried (--max-failures times), then recorded as failed; the
    search goes on and exits 1."""
    (tmp_path / "first_fails.py").write_text(FIRST_TRIAL_FAILS)
    out = search(
        tmp_path, "--space", str(tmp_path / "first_fails.py"), "--preset", "tiny",
        "--num-samples", "2", "--max-failures", "1", "--name", "f", "budget.tokens=8192",
    )  # fmt: skip
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    trials = read_trials(tmp_path / "res" / "f" / "trials.parquet")
    runs = trials[trials.role == "search"].set_index("stages.unique_layers_str")
    assert sorted(runs.status) == ["completed", "failed"]
    failed = runs.loc["1-2-4"]
    assert failed.status == "failed" and "same or an edge step" in failed.error
    # Ray Tune appends one "Failure # n" entry per failed attempt: 1 try + 1 retry.
    errors = list((tmp_path / "res" / "f").glob(f"**/trial_{failed.trial_id}/error.txt"))
    assert len(errors) == 1, errors
    attempts = [ln for ln in errors[0].read_text().splitlines() if ln.startswith("Failure # ")]
    assert len(attempts) == 2, attempts


def test_time_budget_ends_the_search_and_leaves_no_trial_running(tmp_path):
    """README: --time-budget S is Tune's budget for the whole search. Trials one at a time, each
    a few seconds even on a fast machine: far fewer than 30 fit into 15 s; the search still ends
    normally (exit 0), and no trial is left `running`."""
    out = search(
        tmp_path, "--space", "smoke", "--preset", "tiny", "--num-samples", "30",
        "--max-concurrent", "1", "--time-budget", "15", "--name", "b", "budget.tokens=32768",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials = read_trials(tmp_path / "res" / "b" / "trials.parquet")
    assert trials[trials.role == "reference"].status.tolist() == ["completed"]
    runs = trials[trials.role == "search"]
    assert 1 <= len(runs) < 30
    assert set(runs.status) <= {"completed", "stopped"}, runs[["trial_id", "status"]]


# ---------------------------------------------------------------------------- --gpus-per-trial
# Runs `progtune search` up to the point where the trials' resources are fixed, prints them and
# stops there (no trial needs a GPU that this machine does not have).
CAPTURE_RESOURCES = """
import json, sys
import progtune.local_ray as local_ray

class Captured(Exception):
    pass

_prepare = local_ray.prepare_ray_env

def prepare(address):
    root = _prepare(address)
    from ray import tune  # after progtune set Ray's environment

    def capture(trainable, resources):
        print("trial resources: " + json.dumps(dict(resources)), flush=True)
        raise Captured

    tune.with_resources = capture
    return root

local_ray.prepare_ray_env = prepare
from progtune.cli import main

try:
    main(sys.argv[1:])
except Captured:
    sys.exit(0)
sys.exit(3)
"""

AUTOSCALER_WITH_GPU_NODES = """available_node_types:
  head: {resources: {CPU: 2}}
  gpu_worker: {resources: {CPU: 8, GPU: 1}}
"""


@pytest.mark.parametrize("where", ["gpus now", "autoscaler can add"])
def test_gpus_per_trial_defaults_to_one_when_the_cluster_has_or_can_add_gpus(tmp_path, where):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PROGTUNE_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    if where == "gpus now":  # Ray counts a (fake) GPU on this node
        env["RAY_OVERRIDE_RESOURCES"] = json.dumps({"GPU": 1})
    else:  # a `ray up` head node: the autoscaler's config lists GPU worker types
        (home / "ray_bootstrap_config.yaml").write_text(AUTOSCALER_WITH_GPU_NODES)
    out = subprocess.run(
        [sys.executable, "-c", CAPTURE_RESOURCES, "search", "--space", "smoke", "--preset",
         "tiny", "--num-samples", "1", "--storage", str(tmp_path / "res"), "--name", "g"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("trial resources: "))
    resources = {k.lower(): v for k, v in json.loads(line.split(": ", 1)[1]).items()}
    assert resources["gpu"] == 1 and resources["cpu"] == 1, resources
