"""ray_cluster.yaml: valid for Ray's own validator (offline, never `ray up --yes`), and pinned."""

from __future__ import annotations

import copy
import platform
import re
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_FILE = Path(__file__).resolve().parents[1] / "ray_cluster.yaml"


@pytest.fixture
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_FILE.read_text())


def validate(config: dict) -> None:
    """What `ray up` checks before it touches the cloud: defaults filled, then the JSON schema."""
    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_file_passes_rays_validator(cluster):
    validate(cluster)


@pytest.mark.parametrize(
    ("path", "value"),
    [(("max_workers",), "eight"), (("available_node_types", "gpu_spot", "max_wrkers"), 3)],
)
def test_validator_catches_typos_and_wrong_types(cluster, path, value):
    node = cluster
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(Exception, match=r"not of type|unexpected"):
        validate(cluster)


def test_images_pin_this_ray_and_python(cluster):
    py = "py" + "".join(platform.python_version_tuple()[:2])
    for image in (cluster["docker"]["head_image"], cluster["docker"]["worker_image"]):
        assert image.startswith(f"rayproject/ray:{ray.__version__}-{py}-"), image


def test_gpu_spot_workers_autoscale_from_zero_and_token_auth(cluster):
    workers = cluster["available_node_types"]["gpu_spot"]
    assert workers["min_workers"] == 0 and workers["resources"]["GPU"] >= 1
    assert workers["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert cluster["available_node_types"]["head"]["resources"].get("GPU", 0) == 0
    assert "--env RAY_AUTH_MODE=token" in cluster["docker"]["run_options"]
    assert "/home/ray/.ray/auth_token" in cluster["file_mounts"]
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head


def test_no_credentials_in_the_repository_file():
    text = CLUSTER_FILE.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # an AWS access key id
    assert not re.search(r"(?i)aws_secret_access_key|aws_access_key_id", text)


def prepared(config: dict) -> dict:
    """The config as `ray up` uses it (defaults filled, setup commands merged per node role)."""
    return prepare_config(copy.deepcopy(config))


def test_the_upload_leaves_out_git_venv_results_and_runs(cluster):
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    # The rsync flags `ray up` builds from the file (Ray's own code, no rsync run here).
    args = SSHCommandRunner._create_rsync_filter_args(None, prepared(cluster))
    excluded = {args[i + 1].strip("/") for i, a in enumerate(args) if a == "--exclude"}
    assert {".git", ".venv", "results", "runs"} <= excluded
    assert ["--filter", "dir-merge,- .gitignore"] == args[-2:]


def test_the_cpu_head_gets_the_cpu_torch_wheel_and_gpu_workers_the_cuda_one(cluster):
    from packaging.requirements import Requirement

    config = prepared(cluster)
    head, workers = (
        " ".join(config["head_setup_commands"]),
        " ".join(config["worker_setup_commands"]),
    )
    assert "--index-url https://download.pytorch.org/whl/cpu" in head
    assert "download.pytorch.org/whl/cpu" not in workers  # PyPI's Linux wheel is the CUDA build
    assert not any("worker_setup_commands" in t for t in cluster["available_node_types"].values())
    pyproject = (CLUSTER_FILE.parent / "pyproject.toml").read_text()
    torch_spec = Requirement(re.search(r'"(torch[^"]*)"', pyproject).group(1)).specifier
    for commands in (head, workers):
        pins = re.findall(r'"torch==([^"]+)"', commands)
        assert pins and all(torch_spec.contains(p) for p in pins), commands
        assert "pip install --quiet -e /home/ray/progtune" in commands
        assert commands.index("torch==") < commands.index("-e /home/ray/progtune")


def test_nodes_have_room_for_images_and_caches(cluster):
    for node_type, least_gb in (("gpu_spot", 150), ("head", 50)):
        (disk,) = cluster["available_node_types"][node_type]["node_config"]["BlockDeviceMappings"]
        assert disk["DeviceName"] == "/dev/sda1" and disk["Ebs"]["VolumeSize"] >= least_gb


def test_the_example_command_writes_results_to_object_storage():
    header = [line for line in CLUSTER_FILE.read_text().splitlines() if line.startswith("#")]
    (search,) = [line for line in header if "ray exec" in line]
    assert "--address auto" in search and "--storage s3://" in search
