"""A search's curves.parquet as a folder of per-trial part files, each replaced atomically.

`pd.read_parquet(folder)` and `results.read_curves(folder)` read the folder whole. A write replaces
only the parts it is given, so its cost follows the rows of the trials that changed, not all the
rows stored so far. Experiments written before (one curves.parquet file) are moved to the folder
layout on their first write after `--resume`.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow.fs as pafs

from progtune.errors import ResultsError
from progtune.results import resolve_location, write_curves

PART_PREFIX = "trial-"  # never "." or "_": readers skip such names
_PUT_THREADS = 8  # object stores: parts are separate PUTs, sent side by side


@functools.cache  # asked for every trial at every write
def part_name(trial_id: str) -> str:
    """The part file of one trial; distinct trial ids give distinct names."""
    return f"{PART_PREFIX}{quote(trial_id, safe='')}.parquet"


class CurveParts:
    """curves.parquet/ of one experiment: one part per trial, written and removed by name."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self._layout: str | None = None  # "folder" | "file" (a single old file) | "none"
        self._on_store: set[str] = set()  # part names known to exist

    @property
    def backup(self) -> Path:
        """Where a local single file waits while the folder takes its place (read after a crash)."""
        path = Path(resolve_location(self.uri)[1])
        return path.with_name(f".{path.name}.single-file")

    def layout(self) -> str:
        """Inspected once: "folder", "file" (written before part files) or "none" (nothing yet)."""
        if self._layout is None:
            fs, path = resolve_location(self.uri)
            info = _info(fs, path, self.uri)
            if info.type == pafs.FileType.Directory:
                names = (i.base_name for i in _info(fs, pafs.FileSelector(path), self.uri))
                self._on_store = {n for n in names if n.startswith(PART_PREFIX)}
            kinds = {pafs.FileType.Directory: "folder", pafs.FileType.File: "file"}
            self._layout = kinds.get(info.type, "none")
        return self._layout

    def has(self, trial_id: str) -> bool:
        """The trial has a part in the folder (listed when the layout was inspected, or written)."""
        return self.layout() == "folder" and part_name(trial_id) in self._on_store

    def read_path(self) -> str:
        """What to read on resume: the folder or single file, or the backup a crash left behind."""
        local = isinstance(resolve_location(self.uri)[0], pafs.LocalFileSystem)
        if self.layout() == "none" and local and self.backup.is_file():
            return str(self.backup)
        return self.uri

    def write(self, parts: Mapping[str, list[dict]]) -> None:
        """Replace the part of each trial id in `parts` (its whole curve, rows in order).

        In the folder layout, only those parts. A single old file is replaced by a folder of all
        the parts (the caller passes every trial then): local, built beside it and renamed into
        place; object stores, parts first, then the old object deleted (until then readers keep
        reading the old file, which the store lists first).
        """
        layout = self.layout()
        fs, path = resolve_location(self.uri)
        local = isinstance(fs, pafs.LocalFileSystem)
        if layout == "file" and local:
            self._replace_local_file(Path(path), parts)
        else:
            self._put(self.uri, parts)
            if layout == "file":
                _call(fs.delete_file, path, self.uri)
        if local and layout != "folder":
            self.backup.unlink(missing_ok=True)  # the folder is whole now
        self._layout = "folder"

    def remove_except(self, trial_ids: Iterable[str]) -> None:
        """Delete the parts of trials not in `trial_ids` (runs the search dropped)."""
        stale = self._on_store - {part_name(t) for t in trial_ids}
        if not stale:
            return
        fs, path = resolve_location(self.uri)
        for name in sorted(stale):
            try:
                fs.delete_file(f"{path}/{name}")
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise ResultsError(f"cannot remove {self.uri}/{name} ({exc})") from exc
            self._on_store.discard(name)

    def _put(self, folder: str, parts: Mapping[str, list[dict]]) -> None:
        jobs = [(f"{folder}/{part_name(t)}", rows) for t, rows in parts.items()]
        if len(jobs) > 1:
            with ThreadPoolExecutor(min(_PUT_THREADS, len(jobs))) as pool:
                list(pool.map(lambda job: write_curves(job[1], job[0]), jobs))
        elif jobs:
            write_curves(jobs[0][1], jobs[0][0])
        self._on_store.update(part_name(t) for t in parts)

    def _replace_local_file(self, path: Path, parts: Mapping[str, list[dict]]) -> None:
        """Two renames: the old file aside (kept as the backup), the finished folder in place."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            self._put(str(tmp), parts)
            os.replace(path, self.backup)
            os.rename(tmp, path)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise ResultsError(f"cannot write results to {self.uri} ({exc})") from exc
            raise


def _info(fs: pafs.FileSystem, what: str | pafs.FileSelector, shown: str) -> Any:
    return _call(fs.get_file_info, what, shown)


def _call(method: Callable[[Any], Any], arg: Any, shown: str) -> Any:
    """A filesystem call whose OSError becomes a ResultsError naming the results path."""
    try:
        return method(arg)
    except OSError as exc:
        raise ResultsError(f"cannot reach results at {shown} ({exc}); check the path") from exc
