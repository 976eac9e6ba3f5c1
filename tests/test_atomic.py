"""progtune.atomic: whole files or nothing, no temp files left behind, the usual file mode."""

from __future__ import annotations

import os
import threading

import pytest

from progtune.atomic import write_atomic, write_text_atomic


def test_failed_write_keeps_the_previous_file_and_no_temp(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_text_atomic(path, "old")

    def half(f):
        f.write(b"new but")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(path, half)
    assert path.read_text() == "old"
    assert os.listdir(path.parent) == ["a.json"]


def test_mode_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "m.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "m.txt").stat().st_mode & 0o777 == 0o644


def test_concurrent_writers_each_replace_a_whole_file(tmp_path):
    path = tmp_path / "c.txt"
    texts = [str(i) * 200_000 for i in range(8)]
    threads = [threading.Thread(target=write_text_atomic, args=(path, t)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert path.read_text() in texts
    assert os.listdir(tmp_path) == ["c.txt"]
