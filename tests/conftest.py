"""Shared fixtures: the `tiny` preset and its prepared tokens, cached in a session temp folder;
background searches and a `ray start` cluster for the slow multi-process tests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from progtune.config import Config, resolve

if TYPE_CHECKING:
    from search_processes import Driver


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests without CUDA; torch is imported only when such a test was collected."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch  # lazy: collecting the fast suite must not pay for importing torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Token cache for the whole session; never the user's home or $PROGTUNE_CACHE."""
    return tmp_path_factory.mktemp("progtune-cache")


@pytest.fixture(scope="session")
def tiny_cfg(tiny_cache_dir: Path) -> Config:
    """The `tiny` preset (2 blocks x 32 wide, 64 steps) with the cache in the session folder."""
    return resolve("tiny", overrides={"data.cache_dir": str(tiny_cache_dir)})


@pytest.fixture(scope="session")
def tiny_data(tiny_cfg: Config):
    """Tokens of the `tiny` preset, prepared once per session (BPE on ~1 MB of stdlib source)."""
    from progtune.data import prepare_data

    return prepare_data(tiny_cfg.data)


@pytest.fixture
def one_torch_thread():
    """Run a torch test on one thread, restoring the previous count afterwards.

    Tiny models gain nothing from a second thread, and on a shared 2-core machine OpenMP's
    spinning threads made the same test 20-50x slower (measured: 0.2 s vs 6-10 s per test).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def drivers():
    """Start searches with drivers(tmp, *args); every one is stopped with its Ray at the end."""
    from search_processes import Driver  # lazy: the fast suite never loads the fault harness

    started: list[Driver] = []

    def start(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Driver:
        d = Driver(tmp, list(args), env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def ray_cluster():
    """A `ray start` cluster on 127.0.0.1 (tests/ray_nodes.py): the test starts its head and
    workers; every process of it is stopped at the end."""
    from ray_nodes import Cluster

    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
