"""A Ray cluster of `ray start` nodes on 127.0.0.1 with token auth, for the multi-node tests.

Every process of a worker node carries PT_FAULT_NODE=<uuid> in its environment (Ray's daemons and
workers inherit the environment of the `ray start` that made them), so one node can be killed
whole without touching the head, the other nodes or anybody else's Ray. Only processes started
here are stopped (never `ray stop`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from search_processes import kill_marked

RAY = str(Path(sys.executable).with_name("ray"))

# `ray start --address=127.0.0.1:P` rewrites 127.0.0.1 to the machine's routable address (and
# refuses RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 on a worker): a worker starts through Ray's own CLI
# with that rewrite disabled, so nothing ever leaves loopback.
_WORKER_START = (
    "import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda h: h\n"
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Head and worker nodes on 127.0.0.1 sharing one token and one temp folder."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="pt2n-", dir="/tmp")  # short: Unix socket paths
        token = Path(self.tmp) / "auth_token"
        token.write_text(os.urandom(32).hex())
        token.chmod(0o600)
        self.address = f"127.0.0.1:{_free_port()}"
        env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        env.pop("RAY_ADDRESS", None)
        env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        self.env = env
        self.markers: list[str] = []
        self.common = [
            "--object-store-memory=100000000",
            f"--temp-dir={self.tmp}",
            "--disable-usage-stats",
        ]

    def start_head(self, cpus: int = 0) -> None:
        """The head node; 0 CPUs (the default) runs no trials, like ray_cluster.yaml's head."""
        port = self.address.split(":")[1]
        # The head's own address detection would pick the routable address without this flag.
        subprocess.run(
            [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
             "--include-dashboard=false", f"--num-cpus={cpus}", *self.common],
            env={**self.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def add_worker(self, cpus: int) -> str:
        """Start a worker node; returns the marker in the environment of all its processes."""
        marker = f"PT_FAULT_NODE={uuid.uuid4().hex}"
        self.markers.append(marker)
        key, value = marker.split("=")
        subprocess.run(
            [sys.executable, "-c", _WORKER_START, "start", f"--address={self.address}",
             f"--num-cpus={cpus}", *self.common],
            env={**self.env, key: value}, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        return marker

    def stop(self) -> None:
        for marker in [*self.markers, self.tmp + "/"]:
            kill_marked(marker)
        shutil.rmtree(self.tmp, ignore_errors=True)
