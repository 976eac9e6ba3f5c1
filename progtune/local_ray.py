"""A private, loopback-only local Ray: environment set before `import ray` (Ray reads it then)."""

from __future__ import annotations

import os
import tempfile


def prepare_local_ray_env() -> str:
    """Environment for a private, loopback-only local Ray; returns its short temp folder.

    Must run before Ray starts: Ray reads these at import/start. A stray RAY_ADDRESS is dropped
    (local mode never joins a cluster silently); the auth token lives in the temp folder, not in
    the user's home; Unix socket paths need a short folder (~107 bytes).
    """
    os.environ.pop("RAY_ADDRESS", None)
    # Without this Ray rewrites 127.0.0.1 to the machine's routable address on Linux.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    tmp_root = tempfile.mkdtemp(prefix="pt-", dir="/tmp")
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
