"""Results files under faults (issue 5): a killed write, storage that cannot be written.

A write killed half-way (or before its fsync) leaves the previous version whole for every
reader, and the temp file is never taken as results; storage that cannot be written fails at
start: exit 2, one line naming --storage, no Ray. (Readers polling a live search: see
test_faults_trials.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from search_processes import PY, run_cli, search_env

from progtune.results import read_curves

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------- 1. killed write
_WRITER = textwrap.dedent(
    """
    import io, os, sys, time
    from pathlib import Path
    import pyarrow.parquet as pq
    from progtune.results import write_curves

    dest, mode, flag = sys.argv[1], sys.argv[2], Path(sys.argv[3])

    def rows(n):
        return [{"experiment": "x", "trial_id": "t", "step": i, "eval_loss": float(i)}
                for i in range(n)]

    write_curves(rows(3), dest)  # the previous version

    def hang(*args):
        flag.write_text("in the write")
        time.sleep(600)

    if mode == "fsync":  # the whole new file is in the temp file, not yet synced or renamed
        os.fsync = hang
    else:  # half of the new file's bytes are out, then the process dies
        real = pq.write_table

        def half(table, where, **kwargs):
            buf = io.BytesIO()
            real(table, buf, **kwargs)
            where.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            where.flush()
            hang()

        pq.write_table = half
    write_curves(rows(5000), dest)
    """
)


@pytest.mark.parametrize("mode", ["fsync", "half-written"])
def test_killed_write_leaves_the_previous_version_intact(tmp_path, mode):
    import pyarrow.parquet as pq

    folder = tmp_path / "exp"
    dest, flag = folder / "curves.parquet", tmp_path / "flag"
    proc = subprocess.Popen(
        [PY, "-c", _WRITER, str(dest), mode, str(flag)], env=search_env(tmp_path)
    )
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None, "the writer exited before the second write"
            assert time.monotonic() < deadline, "the writer never reached the second write"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    temps = [p for p in folder.iterdir() if p != dest]
    assert len(temps) == 1 and temps[0].name.startswith("."), temps  # killed mid-write
    if mode == "half-written":
        with pytest.raises(Exception):  # noqa: B017 - the temp file is not a Parquet file
            pq.read_table(temps[0])
    # The previous version, whole, by every reader; the temp file is never taken as results.
    for df in (
        read_curves(dest),
        pd.read_parquet(dest),
        read_curves(folder),
        pd.read_parquet(folder),
    ):
        assert list(df["step"]) == [0, 1, 2]


# ---------------------------------------------------------------------------- 2. storage
_NO_RAY_PROBE = textwrap.dedent(
    """
    import atexit, os, sys
    atexit.register(lambda: open(os.environ["PT_RAY_PROBE"], "w").write(
        "ray" if "ray" in sys.modules else "no-ray"))
    """
)


def _run_probed(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess, str, float]:
    """The CLI with a sitecustomize that records whether `ray` was ever imported."""
    probe_dir = tmp / "_probe"
    probe_dir.mkdir(exist_ok=True)
    (probe_dir / "sitecustomize.py").write_text(_NO_RAY_PROBE)
    env = search_env(tmp, PYTHONPATH=str(probe_dir), PT_RAY_PROBE=str(probe_dir / "ray.txt"))
    t0 = time.monotonic()
    out = run_cli(tmp, *args, timeout=120, env=env)
    return out, (probe_dir / "ray.txt").read_text(), time.monotonic() - t0


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "_probe" not in p.parts)


@pytest.mark.parametrize(
    "storage",
    ["{tmp}/afile/sub", "file://{tmp}/afile/sub", "/proc/progtune-no-such/sub", "/sys/progtune-x"],
    ids=["under-a-file", "file-uri-under-a-file", "proc", "sysfs"],
)
def test_unwritable_storage_fails_at_start(tmp_path, storage):
    (tmp_path / "afile").write_text("not a folder\n")
    storage = storage.replace("{tmp}", str(tmp_path))
    before = _tree(tmp_path)
    args = ["--space", "smoke", "--preset", "tiny", "--num-samples", "1", "--name", "x"]
    out, ray, took = _run_probed(tmp_path, "search", *args, "--storage", storage)
    shown = out.stdout[-2000:] + out.stderr[-2000:]
    assert out.returncode == 2, shown
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"--storage {storage} is not writable" in lines[0], shown
    assert "Traceback" not in shown and out.stdout == "", shown  # not even the data was prepared
    assert ray == "no-ray" and took < 20, (ray, took)
    assert _tree(tmp_path) == before and (tmp_path / "afile").read_text() == "not a folder\n"
    assert not Path(storage.removeprefix("file://")).exists()


def test_file_uri_storage_to_a_new_folder_is_accepted(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    storage = f"file://{tmp_path}/new/sub"
    # A corpus error comes after the storage check: seeing it means --storage was accepted.
    out, ray, _ = _run_probed(tmp_path, "search", "--space", "smoke", "--preset", "tiny",
                              "--storage", storage, "--name", "x",
                              f"data.corpus={tmp_path}/empty.txt")  # fmt: skip
    assert out.returncode == 2 and ray == "no-ray"
    assert "holds no text" in out.stderr, out.stderr
