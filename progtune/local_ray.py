"""A private, loopback-only local Ray: environment set before `import ray` (Ray reads it then),
and its temp folder, which records its driver so that a later start can remove what a killed
driver left behind (the folder, holding Ray's token, and Ray processes that outlive the driver).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

FOLDER_PREFIX = "pt-"  # /tmp/pt-XXXXXXXX: short, for Unix socket paths (~107 bytes)
DRIVER_RECORD = "driver.json"  # {"pid": ..., "start_time": ...} of the driver that made the folder


def prepare_local_ray_env() -> str:
    """Environment for a private, loopback-only local Ray; returns its short temp folder.

    Must run before Ray starts: Ray reads these at import/start. A stray RAY_ADDRESS is dropped
    (local mode never joins a cluster silently); the auth token lives in the temp folder, not in
    the user's home; Unix socket paths need a short folder (~107 bytes).
    """
    os.environ.pop("RAY_ADDRESS", None)
    # Without this Ray rewrites 127.0.0.1 to the machine's routable address on Linux.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    remove_stale_ray_folders()
    tmp_root = tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir="/tmp")
    record_driver(tmp_root)
    token = os.path.join(tmp_root, "auth_token")
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex())
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = token
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tmp_root, "inductor"))
    return tmp_root


def prepare_ray_env(address: str | None) -> str | None:
    """Before `import ray`: a private local Ray (returns its temp folder) or join `address`.

    A cluster on this machine (a loopback address) keeps the driver on loopback too.
    """
    if address is None:
        return prepare_local_ray_env()
    if address.split(":")[0] in ("127.0.0.1", "localhost"):
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return None


# ---------------------------------------------------------------------------- leftovers
def process_start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot, /proc/<pid>/stat field 22); None if it is
    gone or a zombie (dead, not yet reaped).

    A PID and its start time name one process: a PID the kernel reused has another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (the command name) may hold spaces and parentheses: count after the last ")".
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def record_driver(folder: str) -> None:
    """Write this process's PID and start time into `folder` (atomically: never half a record)."""
    record = {"pid": os.getpid(), "start_time": process_start_time(os.getpid())}
    tmp = os.path.join(folder, f".{DRIVER_RECORD}.tmp")
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, os.path.join(folder, DRIVER_RECORD))


def driver_gone(folder: str) -> bool:
    """True only when `folder` records a driver and that very process no longer runs.

    No record, an unreadable one, or no /proc to check: False (a driver may be writing it now).
    """
    try:
        record = json.loads(Path(folder, DRIVER_RECORD).read_text())
        pid, started = int(record["pid"]), record["start_time"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if started is None or not os.path.isdir("/proc"):
        return False
    return process_start_time(pid) != started


def stale_ray_folders(root: str = "/tmp") -> list[str]:
    """This user's private Ray folders under `root` whose recorded driver is gone."""
    out = []
    for path in sorted(Path(root).glob(f"{FOLDER_PREFIX}*")):
        try:
            info = path.lstat()
        except OSError:
            continue
        if path.is_dir() and not path.is_symlink() and info.st_uid == os.getuid():
            if driver_gone(str(path)):
                out.append(str(path))
    return out


def processes_naming(folder: str) -> dict[int, int]:
    """PID -> start time of the processes whose command line or environment names `folder`/.

    Every Ray process of a local search does: the token path is in its environment. The
    trailing "/" keeps /tmp/pt-ab from matching /tmp/pt-abc; this process is never included.
    """
    marker = (folder.rstrip("/") + "/").encode()
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        started = process_start_time(int(entry))
        if (marker in cmdline or marker in environ) and started is not None:
            out[int(entry)] = started
    return out


def stop_processes(procs: dict[int, int], grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s`, each process still the one seen (same start time)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [pid for pid, started in procs.items() if process_start_time(pid) == started]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [pid for pid in alive if process_start_time(pid) == procs[pid]]
        if not alive:
            return


def remove_stale_ray_folders(root: str = "/tmp") -> list[str]:
    """Stop the Ray processes of every folder whose driver is gone, then delete the folder.

    A folder whose driver lives is never touched, nor a process that does not name the folder.
    Returns the folders removed.
    """
    if not os.path.isdir("/proc"):  # no way to tell whose processes are whose: leave all
        return []
    removed = []
    for folder in stale_ray_folders(root):
        stop_processes(processes_naming(folder))
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
