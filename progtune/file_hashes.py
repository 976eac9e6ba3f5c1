"""Content hashes of corpus files, remembered by path, size and mtime so a cache hit reads none."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from progtune.atomic import write_atomic

INDEX_NAME = "file-hashes.json"


def content_hashes(files: list[Path], cache_folder: Path) -> list[str]:
    """sha256 of each file's bytes, in order. A file whose (size, mtime_ns) matches the entry
    remembered in `cache_folder` is not read again; changed or new files are hashed (streamed)
    and the remembered index is rewritten atomically (concurrent writers: the last one wins)."""
    index_path = cache_folder / INDEX_NAME
    try:
        known = json.loads(index_path.read_text())
    except (OSError, ValueError):
        known = {}
    hashes, changed = [], False
    for path in files:
        key = str(path.resolve())
        st = path.stat()
        entry = known.get(key)
        if not (isinstance(entry, list) and entry[:2] == [st.st_size, st.st_mtime_ns]):
            with open(path, "rb") as f:
                entry = [st.st_size, st.st_mtime_ns, hashlib.file_digest(f, "sha256").hexdigest()]
            known[key], changed = entry, True
        hashes.append(entry[2])
    if changed:
        text = json.dumps(known)
        write_atomic(index_path, lambda f: f.write(text.encode()))
    return hashes
