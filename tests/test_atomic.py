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
    """8 writers of texts of different lengths, and a reader looping while they run.

    A writer that truncates and rewrites in place (plain `Path.write_text`) shows the reader an
    empty file, a prefix, or the head of one text over the tail of a longer one; an atomic writer
    only ever shows one whole text.
    """
    path = tmp_path / "c.txt"
    texts = [chr(ord("a") + i) * (20_000 * (i + 1)) for i in range(8)]
    whole = set(texts)
    write_text_atomic(path, texts[0])
    writing = threading.Event()
    writing.set()
    seen: list[int] = []  # lengths of every read; a torn read is a length not in `texts`
    torn: list[int] = []

    def read_while_writing() -> None:
        while writing.is_set():
            got = path.read_text()
            seen.append(len(got))
            if got not in whole:
                torn.append(len(got))

    def write_repeatedly(text: str) -> None:
        for _ in range(10):
            write_text_atomic(path, text)

    reader = threading.Thread(target=read_while_writing)
    writers = [threading.Thread(target=write_repeatedly, args=(t,)) for t in texts]
    reader.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    writing.clear()
    reader.join()
    assert len(seen) >= 10, "the reader barely ran: the check proves nothing"
    assert torn == [], f"{len(torn)} of {len(seen)} reads saw a partial file, e.g. {torn[:5]}"
    assert path.read_text() in whole
    assert os.listdir(tmp_path) == ["c.txt"]
