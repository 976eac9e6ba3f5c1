"""kuberay/*.yaml: the fields KubeRay's CRDs require, and the same cluster as ray_cluster.yaml."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from progtune.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
RAYCLUSTER_FILE = ROOT / "kuberay" / "raycluster.yaml"
RAYJOB_FILE = ROOT / "kuberay" / "rayjob.yaml"

# The `required` lists of the v1 openAPIV3Schema in ray-project/kuberay,
# ray-operator/config/crd/bases/ray.io_rayclusters.yaml and ray.io_rayjobs.yaml, at tag v1.7.0
# (commit 59d663aeec13760646da3db9c1cf8cfe883e30b7), on the paths these manifests use. Paths are
# relative to a RayCluster's `spec`, which has the same schema as a RayJob's
# `spec.rayClusterSpec`; "[]" is every item of a list. (A RayJob's `spec` itself requires none.)
CLUSTER_SPEC_REQUIRED = {
    "": ["headGroupSpec"],
    "headGroupSpec": ["template"],
    "workerGroupSpecs[]": ["groupName", "maxReplicas", "minReplicas", "template"],
    **{
        f"{group}.template.spec{path}": required
        for group in ("headGroupSpec", "workerGroupSpecs[]")
        for path, required in {
            "": ["containers"],
            ".containers[]": ["name"],
            ".containers[].ports[]": ["containerPort"],
            ".containers[].volumeMounts[]": ["mountPath", "name"],
            ".volumes[]": ["name"],
        }.items()
    },
}
# Types and enums there ("*": every value of a map; "quantity": int-or-string).
CLUSTER_SPEC_TYPES = {
    "rayVersion": str,
    "enableInTreeAutoscaling": bool,
    "authOptions.mode": ("disabled", "token"),
    "autoscalerOptions.upscalingMode": ("Default", "Aggressive", "Conservative"),
    "autoscalerOptions.idleTimeoutSeconds": int,
    "headGroupSpec.rayStartParams.*": str,
    "workerGroupSpecs[].rayStartParams.*": str,
    "workerGroupSpecs[].replicas": int,
    "workerGroupSpecs[].minReplicas": int,
    "workerGroupSpecs[].maxReplicas": int,
    **{
        f"{group}.template.spec.containers[].{path}": kind
        for group in ("headGroupSpec", "workerGroupSpecs[]")
        for path, kind in {
            "args[]": str,
            "resources.requests.*": "quantity",
            "resources.limits.*": "quantity",
            "ports[].containerPort": int,
        }.items()
    },
}
RAYJOB_SPEC_TYPES = {"entrypoint": str, "shutdownAfterJobFinishes": bool}


def nodes_at(doc: Any, path: str) -> Iterator[Any]:
    """Every node at a dotted path ("[]" expands a list, "*" a map's values); none if absent."""
    if not path:
        yield doc
        return
    head, _, rest = path.partition(".")
    key, is_list = head.removesuffix("[]"), head.endswith("[]")
    if key == "*":
        children = list(doc.values()) if isinstance(doc, dict) else []
    else:
        children = [doc[key]] if isinstance(doc, dict) and key in doc else []
    for child in children:
        for item in child if is_list else [child]:
            yield from nodes_at(item, rest)


def schema_problems(spec: dict, required: dict, types: dict) -> list[str]:
    problems = []
    for path, keys in required.items():
        for node in nodes_at(spec, path):
            problems += [f"{path or 'spec'}: {k} missing" for k in keys if k not in node]
    for path, kind in types.items():
        for value in nodes_at(spec, path):
            if kind == "quantity":
                ok = isinstance(value, int | str) and not isinstance(value, bool)
            elif isinstance(kind, tuple):
                ok = value in kind
            else:
                ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
            if not ok:
                problems.append(f"{path}: {value!r} is not {kind}")
    return problems


@pytest.fixture
def raycluster() -> dict:
    return yaml.safe_load(RAYCLUSTER_FILE.read_text())


@pytest.fixture
def rayjob() -> dict:
    return yaml.safe_load(RAYJOB_FILE.read_text())


@pytest.fixture
def cluster_yaml() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def test_manifests_have_the_fields_kuberays_crds_require(raycluster, rayjob):
    assert (raycluster["apiVersion"], raycluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    for doc in (raycluster, rayjob):
        assert doc["metadata"]["name"]
    cluster_spec = rayjob["spec"]["rayClusterSpec"]
    for spec in (raycluster["spec"], cluster_spec):
        assert schema_problems(spec, CLUSTER_SPEC_REQUIRED, CLUSTER_SPEC_TYPES) == []
    assert schema_problems(rayjob["spec"], {}, RAYJOB_SPEC_TYPES) == []


def test_manifests_pass_the_operators_own_checks(raycluster, rayjob):
    """What KubeRay's controller refuses beyond the schema (same commit,
    ray-operator/controllers/ray/utils/validation.go and constant.go)."""
    from packaging.version import Version

    dns1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
    for doc, longest in ((raycluster, 53), (rayjob, 53 - 6)):
        name = doc["metadata"]["name"]
        assert dns1035.fullmatch(name) and len(name) <= longest
    for spec in (raycluster["spec"], rayjob["spec"]["rayClusterSpec"]):
        assert Version(spec["rayVersion"]) >= Version("2.52.0")  # token auth needs it
        for group in spec["workerGroupSpecs"]:
            assert 0 <= group["minReplicas"] <= group["maxReplicas"]
        assert spec["autoscalerOptions"]["idleTimeoutSeconds"] >= 0


def test_the_schema_check_catches_a_missing_field_and_a_wrong_type(raycluster):
    spec = raycluster["spec"]
    del spec["workerGroupSpecs"][0]["maxReplicas"]
    spec["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    problems = schema_problems(spec, CLUSTER_SPEC_REQUIRED, CLUSTER_SPEC_TYPES)
    assert problems == [
        "workerGroupSpecs[]: maxReplicas missing",
        "headGroupSpec.rayStartParams.*: 0 is not <class 'str'>",
    ]


def test_the_rayjob_brings_up_the_same_cluster(raycluster, rayjob):
    assert rayjob["spec"]["rayClusterSpec"] == raycluster["spec"]


def head_and_gpu_group(spec: dict) -> tuple[dict, dict]:
    (group,) = spec["workerGroupSpecs"]
    return spec["headGroupSpec"], group


def test_same_images_ray_version_and_token_auth_as_ray_cluster_yaml(raycluster, cluster_yaml):
    spec = raycluster["spec"]
    head, gpu = head_and_gpu_group(spec)
    (head_container,) = head["template"]["spec"]["containers"]
    (gpu_container,) = gpu["template"]["spec"]["containers"]
    assert head_container["image"] == cluster_yaml["docker"]["head_image"]
    assert gpu_container["image"] == cluster_yaml["docker"]["worker_image"]
    assert spec["rayVersion"] == ray.__version__
    assert head_container["image"].startswith(f"rayproject/ray:{spec['rayVersion']}-")
    assert "--env RAY_AUTH_MODE=token" in cluster_yaml["docker"]["run_options"]
    assert spec["authOptions"]["mode"] == "token"


def test_same_resources_and_autoscaling_as_ray_cluster_yaml(raycluster, cluster_yaml):
    spec = raycluster["spec"]
    head, gpu = head_and_gpu_group(spec)
    types = cluster_yaml["available_node_types"]
    head_type, gpu_type = types[cluster_yaml["head_node_type"]], types["gpu_spot"]
    assert head["rayStartParams"]["num-cpus"] == str(head_type["resources"]["CPU"])  # no trials
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    # KubeRay's `ray start` counts the limits: --num-cpus and --num-gpus.
    assert str(limits["cpu"]) == str(gpu_type["resources"]["CPU"])
    assert limits["nvidia.com/gpu"] == gpu_type["resources"]["GPU"]
    assert "num-cpus" not in gpu["rayStartParams"] and "num-gpus" not in gpu["rayStartParams"]
    assert spec["enableInTreeAutoscaling"] is True
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (
        gpu_type["min_workers"],
        gpu_type["max_workers"],
    )
    assert gpu["replicas"] == gpu["minReplicas"]
    idle_s = spec["autoscalerOptions"]["idleTimeoutSeconds"]
    assert idle_s == 60 * cluster_yaml["idle_timeout_minutes"]


def test_same_installs_before_ray_starts_as_ray_cluster_yaml(raycluster, cluster_yaml):
    """The container args run before KubeRay's `ray start`: the same torch install as the
    cluster file's setup commands for that role, then progtune's wheel from the ConfigMap."""
    head, gpu = head_and_gpu_group(raycluster["spec"])
    for group, commands in (
        (head, cluster_yaml["head_setup_commands"]),
        (gpu, cluster_yaml["worker_setup_commands"]),
    ):
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        (args,) = container["args"]
        torch_step, progtune_step = args.split(" && ")
        assert torch_step == " ".join(commands).split(" && ")[0]
        assert "ray start" not in args and "command" not in container  # KubeRay adds its own
        (mount,) = container["volumeMounts"]
        assert progtune_step == f"pip install --quiet {mount['mountPath']}/progtune-*.whl"
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["configMap"]["name"] == "progtune-wheel"


def test_the_rayjob_runs_a_search_that_writes_to_object_storage(rayjob):
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:2] == ["progtune", "search"]
    args = build_parser().parse_args(argv[1:])  # every flag exists in this progtune
    assert args.address == "auto" and args.storage.startswith("s3://")
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True


def test_no_credentials_in_the_manifests():
    for path in (RAYCLUSTER_FILE, RAYJOB_FILE):
        text = path.read_text()
        assert "AKIA" not in text and "aws_secret_access_key" not in text.lower()
        assert "auth_token:" not in text  # KubeRay generates the Ray token into a Secret
