"""`--address` with a local `--storage`: refused (exit 2, one line) where trials may run on other
machines, before anything is written; fine when every node is this machine."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from progtune.cli import main
from progtune.ray_cluster import multi_machine_reason_from

CLUSTER_FILE = Path(__file__).resolve().parents[1] / "ray_cluster.yaml"


def ray_up_bootstrap_config() -> dict:
    """What `ray up ray_cluster.yaml` leaves on the head as ~/ray_bootstrap_config.yaml."""
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(yaml.safe_load(CLUSTER_FILE.read_text()))


def test_nodes_on_two_machines_need_shared_storage():
    reason = multi_machine_reason_from(["10.0.0.5", "10.0.0.6", "10.0.0.6"], None, {})
    assert reason == "the cluster's nodes are on 2 machines"


def test_nodes_on_one_machine_share_its_folders():
    assert multi_machine_reason_from(["127.0.0.1", "127.0.0.1"], None, {}) is None


def test_a_ray_up_head_alone_can_still_add_worker_machines():
    config = ray_up_bootstrap_config()
    assert "autoscaler" in multi_machine_reason_from(["10.0.0.5"], config, {})
    head_only = copy.deepcopy(config)
    head_only["available_node_types"] = {
        config["head_node_type"]: config["available_node_types"][config["head_node_type"]]
    }
    assert multi_machine_reason_from(["10.0.0.5"], head_only, {}) is None


def test_a_kuberay_head_alone_is_still_one_pod_of_many():
    reason = multi_machine_reason_from(["10.0.0.5"], None, {"RAY_CLUSTER_NAME": "progtune"})
    assert "KubeRay" in reason


def search_args(address: str, storage: Path | str) -> list[str]:
    return ["search", "--address", address, "--space", "smoke", "--preset", "tiny",
            "--num-samples", "1", "--storage", str(storage), "--name", "x"]  # fmt: skip


def test_local_storage_on_a_multi_machine_cluster_exits_2_with_one_line(
    tmp_path, monkeypatch, capsys
):
    import progtune.ray_cluster

    joined = []

    def spans_two(address: str) -> str:
        joined.append(address)
        return "the cluster's nodes are on 2 machines"

    monkeypatch.setattr(progtune.ray_cluster, "multi_machine_reason", spans_two)
    assert main(search_args("10.9.8.7:6379", tmp_path / "res")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and joined == ["10.9.8.7:6379"]
    assert "--storage s3://BUCKET/PATH" in err and "2 machines" in err
    assert not (tmp_path / "res").exists()  # nothing written, not even the storage folder


def test_object_storage_and_local_mode_never_join_for_the_check(monkeypatch):
    import progtune.ray_cluster
    from progtune.search_settings import _check_local_storage_on_cluster

    def must_not_join(address: str) -> str:
        raise AssertionError("joined the cluster")

    monkeypatch.setattr(progtune.ray_cluster, "multi_machine_reason", must_not_join)
    _check_local_storage_on_cluster("10.9.8.7:6379", "s3://bucket/progtune")
    _check_local_storage_on_cluster(None, "/tmp/results")


@pytest.mark.slow
def test_local_storage_from_a_kuberay_head_exits_2_before_writing(ray_cluster, tmp_path):
    """A real cluster (one node on 127.0.0.1) seen from a KubeRay head pod's environment."""
    ray_cluster.start_head(cpus=1)
    env = {**ray_cluster.env, "RAY_CLUSTER_NAME": "progtune", "PROGTUNE_CACHE": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "progtune.cli", *search_args(ray_cluster.address, tmp_path / "res")],
        env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    (line,) = out.stderr.splitlines()
    assert "KubeRay" in line and "s3://" in line
    assert not (tmp_path / "res").exists()
