"""A real two-node Ray on this machine (head + worker via `ray start` on 127.0.0.1) and a smoke
search driven through `--address`. Only processes started here are stopped (never `ray stop`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from progtune.results import read_trials

pytestmark = pytest.mark.slow


@pytest.fixture
def two_nodes(ray_cluster):
    """Head and worker node on 127.0.0.1 with token auth, one CPU each; yields (address, env)."""
    ray_cluster.start_head(cpus=1)
    ray_cluster.add_worker(1)
    return ray_cluster.address, ray_cluster.env


def test_smoke_search_through_address(two_nodes, tmp_path):
    address, env = two_nodes
    env = {**env, "PROGTUNE_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-m", "progtune.cli", "search", "--address", address, "--space", "smoke",
         "--preset", "tiny", "--num-samples", "2", "--storage", str(tmp_path / "res"),
         "--name", "twonode"],
        env=env, capture_output=True, text=True, timeout=420, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"joined the Ray cluster at {address} (2 CPUs" in out.stdout
    trials = read_trials(tmp_path / "res" / "twonode" / "trials.parquet")
    assert len(trials) == 3 and set(trials["status"]) == {"completed"}
    assert trials["data_fingerprint"].nunique() == 1
