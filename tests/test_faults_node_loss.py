"""A worker node lost mid-search (issue 5), on a real `ray start` cluster (127.0.0.1 only).

The head runs no trials (0 CPUs, like ray_cluster.yaml's head); a worker node is killed whole
while one of its trials trains, a replacement node joins (as the autoscaler would start one), and
the trial continues from its checkpoint there: every trial once, every curve whole.
"""

from __future__ import annotations

import pytest
from search_processes import (
    assert_every_trial_once,
    expected_steps,
    kill,
    live_trials,
    marked,
    proc_table,
    reference_completed,
    result_lines,
    wait_for,
)

from progtune.results import read_curves

pytestmark = pytest.mark.slow


def test_lost_worker_node_trial_is_rescheduled_and_finishes(ray_cluster, tmp_path, drivers):
    cluster = ray_cluster
    cluster.start_head()
    first = cluster.add_worker(2)
    storage = tmp_path / "res"
    d = drivers(tmp_path, "--address", cluster.address, "--space", "smoke", "--preset", "tiny",
                "--num-samples", "3", "--cpus-per-trial", "1", "--storage", str(storage),
                "--name", "wn", "budget.tokens=262144", "eval.points=8",
                env={**cluster.env, "PROGTUNE_CACHE": str(tmp_path / "cache")})  # fmt: skip
    exp = storage / "wn"

    def trial_training_on_first_node():
        # After the reference run is done (losing the reference is another case).
        if not reference_completed(exp):
            return None
        table = proc_table()
        on_node = [p for p in marked(first) if table.get(p, (0, ""))[1].startswith("ray::Impl")]
        for tid, lines in live_trials(exp, 512).items():  # of 1024 steps
            if lines[-1]["pid"] in on_node:
                return tid, lines[-1]["pid"]
        return None

    tid, pid = wait_for(trial_training_on_first_node, 400, d, "a trial training on the node")
    kill(marked(first))  # the whole node: raylet, agents, workers
    cluster.add_worker(2)  # its replacement, as the autoscaler would start
    assert d.wait(600) == 0, d.shown()
    assert not marked(first)
    trials = assert_every_trial_once(exp, 3)
    lines = result_lines(exp, tid)
    after = [r for r in lines if r["pid"] != pid]
    assert after and after[0]["resumed_from"] > 0, "not continued from its checkpoint"
    curves = read_curves(exp / "curves.parquet")
    steps = expected_steps(**{"budget.tokens": 262144, "eval.points": 8})
    for t in trials["trial_id"]:
        assert list(curves[curves["trial_id"] == t]["step"]) == steps, t
