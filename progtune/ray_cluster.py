"""Ray for a search: start a private local Ray or join a cluster; what the cluster has."""

from __future__ import annotations

import os
from collections.abc import Mapping

import ray

from progtune.search_state import SearchSettings


def start_ray(settings: SearchSettings, tmp_root: str | None) -> str:
    """Start a local Ray on 127.0.0.1 or join `--address`; returns a line saying which."""
    if settings.address is None:
        ctx = ray.init(
            address="local",
            num_cpus=settings.num_cpus or os.cpu_count() or 1,
            object_store_memory=200 * 1024 * 1024,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=tmp_root,
            log_to_driver=True,
            logging_level="WARNING",
            runtime_env={"worker_process_setup_hook": quiet_train_cleaner},
        )
        ip = ctx.address_info["node_ip_address"]
        if ip != "127.0.0.1":  # refuse to run on a routable address
            ray.shutdown()
            raise RuntimeError(f"local Ray picked node address {ip}, expected 127.0.0.1")
        return f"local Ray on 127.0.0.1 ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
    ray.init(address=settings.address, log_to_driver=True, logging_level="WARNING")
    res = ray.cluster_resources()
    return (
        f"joined the Ray cluster at {settings.address} "
        f"({int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs now)"
    )


def quiet_train_cleaner() -> None:
    """In every Ray worker process of a local Ray: Ray Train's placement-group cleaner asks
    Ray's State API, which needs the dashboard that local Ray runs without, and would warn about
    it every second of a trial on workers."""
    import logging

    cleaner = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
    logging.getLogger(cleaner).setLevel(logging.ERROR)


def _autoscaler_config() -> dict | None:
    """The autoscaler's config on a `ray up` head node (None elsewhere)."""
    bootstrap = os.path.expanduser("~/ray_bootstrap_config.yaml")
    if not os.path.exists(bootstrap):
        return None
    import yaml

    with open(bootstrap) as f:
        return yaml.safe_load(f) or {}


def multi_machine_reason(address: str) -> str | None:
    """Why trials of the cluster at `address` may run on another machine than this one, or None
    when every node, now and to come, is on this machine. Joins the cluster for a moment."""
    ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    try:
        node_ips = [n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")]
        return multi_machine_reason_from(node_ips, _autoscaler_config(), os.environ)
    finally:
        ray.shutdown()


def multi_machine_reason_from(
    node_ips: list[str], autoscaler_config: dict | None, environ: Mapping[str, str]
) -> str | None:
    """`multi_machine_reason` from what it reads: the live nodes' addresses, the `ray up`
    autoscaler config of this head (None elsewhere) and the environment."""
    if len(set(node_ips)) > 1:
        return f"the cluster's nodes are on {len(set(node_ips))} machines"
    config = autoscaler_config or {}
    head = config.get("head_node_type")
    types = config.get("available_node_types", {})
    can_add = [t for name, t in types.items() if name != head and t.get("max_workers", 1) > 0]
    if can_add and config.get("max_workers", 1) > 0:
        return "its autoscaler can add worker machines"
    if "RAY_CLUSTER_NAME" in environ:  # KubeRay sets it in every Ray container
        return "this is a KubeRay cluster, where every pod is its own machine"
    return None


def cluster_can_have_gpus() -> bool:
    """GPUs now, or GPU worker types in the autoscaler's config (a `ray up` head node)."""
    if ray.cluster_resources().get("GPU", 0) > 0:
        return True
    types = (_autoscaler_config() or {}).get("available_node_types", {})
    return any(t.get("resources", {}).get("GPU", 0) > 0 for t in types.values())


def cluster_can_grow() -> bool:
    """An autoscaling cluster with fewer worker nodes now than its config allows."""
    config = _autoscaler_config()
    if config is None:
        return False
    head = config.get("head_node_type")
    types = config.get("available_node_types", {})
    most = sum(int(t.get("max_workers", 0)) for name, t in types.items() if name != head)
    if "max_workers" in config:
        most = min(most, int(config["max_workers"])) if types else int(config["max_workers"])
    workers = sum(1 for node in ray.nodes() if node.get("Alive")) - 1  # less the head
    return workers < most


def trial_slots(cpus_per_trial: float, gpus_per_trial: float, workers_per_trial: int = 1) -> int:
    """How many trials the cluster's resources hold at once now (0 when not even one fits).

    A trial of N data-parallel workers holds N x `cpus_per_trial` CPUs (its own process asks
    for none) and `gpus_per_trial` GPUs in all."""
    res = ray.cluster_resources()
    cpus = cpus_per_trial * workers_per_trial
    slots = int(res.get("CPU", 0) / cpus + 1e-9)  # 1e-9: 3 x 0.1 CPU is 0.3
    if gpus_per_trial > 0:
        slots = min(slots, int(res.get("GPU", 0) / gpus_per_trial + 1e-9))
    return slots
