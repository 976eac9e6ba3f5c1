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
