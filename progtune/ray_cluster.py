"""Ray for a search: start a private local Ray or join a cluster; what the cluster has."""

from __future__ import annotations

import os

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


def cluster_can_have_gpus() -> bool:
    """GPUs now, or GPU worker types in the autoscaler's config (a `ray up` head node)."""
    if ray.cluster_resources().get("GPU", 0) > 0:
        return True
    bootstrap = os.path.expanduser("~/ray_bootstrap_config.yaml")
    if os.path.exists(bootstrap):
        import yaml

        with open(bootstrap) as f:
            types = (yaml.safe_load(f) or {}).get("available_node_types", {})
        return any(t.get("resources", {}).get("GPU", 0) > 0 for t in types.values())
    return False
