"""A real two-node Ray on this machine (head + worker via `ray start` on 127.0.0.1) and a smoke
search driven through `--address`. Only processes started here are stopped (never `ray stop`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from progtune.results import read_trials

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _our_pids(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def two_nodes():
    """Head and worker node on 127.0.0.1 with token auth; yields (address, env)."""
    tmp = tempfile.mkdtemp(prefix="pt2n-", dir="/tmp")  # short: Unix socket paths
    token = Path(tmp) / "auth_token"
    token.write_text(os.urandom(32).hex())
    token.chmod(0o600)
    port = _free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    # The head's own address detection would pick the routable address without this flag; the
    # worker refuses to join a "multi-node cluster" with it and finds 127.0.0.1 from the head.
    head_env = {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    common = ["--num-cpus=1", "--object-store-memory=100000000", f"--temp-dir={tmp}",
              "--disable-usage-stats"]  # fmt: skip
    try:
        subprocess.run(
            [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
             "--include-dashboard=false", *common],
            env=head_env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        # `ray start --address=127.0.0.1:P` rewrites 127.0.0.1 to the machine's routable address
        # (and refuses the flag above on a worker): start the worker through Ray's own CLI with
        # that rewrite disabled, so nothing ever leaves loopback.
        worker = (
            "import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda h: h\n"
            "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
        )
        subprocess.run(
            [sys.executable, "-c", worker, "start", f"--address=127.0.0.1:{port}", *common],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        yield f"127.0.0.1:{port}", env, tmp
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _our_pids(tmp):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(2)


def test_smoke_search_through_address(two_nodes, tmp_path):
    address, env, _ = two_nodes
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
