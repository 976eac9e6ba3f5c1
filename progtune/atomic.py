"""Atomic file writes: a reader sees the old file or the new one, never part of one."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """`write(f)` into a dot-prefixed temp file beside `path`, fsync, os.replace, fsync the folder.

    The temp name is unique per writer, so concurrent writers each replace a complete file; on any
    error (or Ctrl-C) the temp file is removed and the previous file stays as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open (not mkstemp) so the file gets the usual umask-based mode, not 0600.
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """write_atomic for UTF-8 text."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))
