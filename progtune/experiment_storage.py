"""Files in an experiment's storage that outlive the process and the node: text, checkpoints.

The storage is a local folder or any URI pyarrow opens (s3://, gs://, file://, a shared mount),
as for Ray Tune's own storage. A run's checkpoint (`StoredCheckpoint`): training writes it into a
local folder; after each one the folder is uploaded whole to `URI/checkpoint_STEP_TOKEN/`, then
`URI/latest.json` is replaced to name it (one small object: on object stores a reader sees the
old marker or the new one), then older uploads are deleted. A reader follows the marker, so a
crash mid-upload leaves the previous checkpoint in use; the next upload deletes the half one.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

LATEST_FILE = "latest.json"


def open_storage(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path in it) of a local folder or a URI."""
    import pyarrow.fs as pafs

    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def read_text(uri: str) -> str | None:
    """A text file in the storage, or None when it is not there."""
    fs, path = open_storage(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode()
    except (FileNotFoundError, OSError):
        return None


def write_text(uri: str, text: str) -> None:
    """Replace a text file in the storage whole: written beside it, then moved over it."""
    fs, path = open_storage(uri)
    parent, _, name = path.rpartition("/")
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{name}.{secrets.token_hex(4)}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode())
    fs.move(tmp, path)


class StoredCheckpoint:
    """The latest checkpoint of one run under `uri` (see the module docstring for the layout)."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")

    def latest(self, config_hash: str) -> dict[str, Any] | None:
        """The marker of the latest upload ({"folder", "step", "config_hash"}) when it was
        written by this config; None when there is none (or another config wrote it)."""
        text = read_text(f"{self.uri}/{LATEST_FILE}")
        marker = json.loads(text) if text else None
        if not marker or marker.get("config_hash") != config_hash:
            return None
        return marker

    def download(self, config_hash: str, into: Path) -> Path | None:
        """The latest checkpoint of this config copied into the local folder `into`; None when
        there is none."""
        import pyarrow.fs as pafs

        marker = self.latest(config_hash)
        if marker is None:
            return None
        fs, base = open_storage(self.uri)
        into.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(f"{base}/{marker['folder']}", str(into), source_filesystem=fs)
        return into

    def upload(self, local: Path, step: int, config_hash: str) -> None:
        """Store the checkpoint folder `local` (written at `step`) as the latest one."""
        import pyarrow.fs as pafs

        fs, base = open_storage(self.uri)
        folder = f"checkpoint_{step:09d}_{secrets.token_hex(4)}"  # unique: never overwrite one
        fs.create_dir(f"{base}/{folder}", recursive=True)
        pafs.copy_files(str(local), f"{base}/{folder}", destination_filesystem=fs)
        marker = {"folder": folder, "step": step, "config_hash": config_hash}
        write_text(f"{self.uri}/{LATEST_FILE}", json.dumps(marker))
        for info in fs.get_file_info(pafs.FileSelector(base)):
            if info.base_name.startswith("checkpoint_") and info.base_name != folder:
                fs.delete_dir(info.path)

    def remove(self) -> None:
        """Delete every upload and the marker (the run is over: nothing to continue)."""
        fs, base = open_storage(self.uri)
        try:
            fs.delete_dir(base)
        except FileNotFoundError:
            pass
