"""Local mode stays private: every socket a search opens listens on loopback, no token in $HOME."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def listeners() -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket on this machine, from /proc/net."""
    out = set()
    for name, width in (("tcp", 8), ("tcp6", 32)):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            addr_hex, port_hex = fields[1].split(":")
            out.add((_address(addr_hex, width), int(port_hex, 16)))
    return out


def _address(hex_addr: str, width: int) -> str:
    if width == 8:  # little-endian IPv4
        return ".".join(str(int(hex_addr[i : i + 2], 16)) for i in (6, 4, 2, 0))
    words = [hex_addr[i : i + 8] for i in range(0, 32, 8)]
    raw = b"".join(bytes.fromhex(w)[::-1] for w in words)
    if raw[:12] == b"\0" * 10 + b"\xff\xff":  # IPv4-mapped
        return ".".join(str(b) for b in raw[12:])
    return ":".join(raw[i : i + 2].hex() for i in range(0, 16, 2))


def exposed_listeners(args: list[str], env: dict, cwd: Path, poll_s: float) -> tuple[set, set]:
    """Run `python -m progtune.cli ARGS` to its end (it must succeed) sampling the listening
    sockets it adds; (all of them, those beyond loopback)."""
    before = listeners()
    proc = subprocess.Popen(
        [sys.executable, "-m", "progtune.cli", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
    )  # fmt: skip
    seen: set[tuple[str, int]] = set()
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        seen |= listeners() - before
        time.sleep(poll_s)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    return seen, {(a, p) for a, p in seen if a not in ("127.0.0.1", "0:0:0:0:0:0:0:1")}


def test_local_search_listens_on_loopback_only_and_leaves_home_alone(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PROGTUNE_CACHE": str(tmp_path / "cache")}
    seen, exposed = exposed_listeners(
        ["search", "--space", "smoke", "--preset", "tiny", "--num-samples", "2",
         "--storage", str(tmp_path / "res"), "--name", "sec"],
        env, tmp_path, 0.5,
    )  # fmt: skip
    assert seen, "the search opened no listening socket at all? (Ray must have run)"
    assert not exposed, f"listening beyond loopback: {sorted(exposed)}"
    assert not (home / ".ray").exists(), "Ray's token file must not land in the user's home"


def test_local_workers_listen_on_loopback_only(tmp_path):
    # `progtune train --workers-per-trial 2` meets through a file, not torch's TCP store (which
    # listens on every interface); gloo's pair sockets stay on 127.0.0.1.
    env = {**os.environ, "PROGTUNE_CACHE": str(tmp_path / "cache")}
    seen, exposed = exposed_listeners(
        ["train", "--preset", "tiny", "--quiet", "--workers-per-trial", "2",
         "--out", str(tmp_path / "run")],
        env, tmp_path, 0.2,
    )  # fmt: skip
    assert seen, "two gloo workers opened no listening socket at all?"
    assert not exposed, f"listening beyond loopback: {sorted(exposed)}"
