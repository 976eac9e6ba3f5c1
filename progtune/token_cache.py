"""Token streams (TokenData) as memory-mapped shard files in a cache folder, and their fingerprint.

One cache entry is a folder `tokens-<fingerprint>/` holding `train.bin` and `val.bin` (raw
little-endian token ids, uint16 when the vocabulary fits, else uint32), `tokenizer.json` and
`index.json` (format, dtype, token counts, ids). It is built in a hidden temp folder and renamed
into place, so readers never see a partial entry. TokenData pickles as its folder path: a Ray
trial re-opens the memmaps from the (local or shared) cache instead of receiving the tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from progtune.errors import DataError

logger = logging.getLogger(__name__)

# Version 2: shard folders (was one .npz); the key hashes files, not decoded documents.
FORMAT_VERSION = 2
_META_KEYS = (
    "vocab_size",
    "eos_id",
    "pad_id",
    "mask_id",
    "fingerprint",
    "n_train_docs",
    "n_val_docs",
)
SPLITS = ("train", "val")


@dataclass(frozen=True)
class TokenData:
    """Token streams (EOS after every document) plus everything needed to decode them.

    `train`/`val` are read-only np.memmap views of the shard files in `shard_dir`.
    """

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    eos_id: int
    pad_id: int
    mask_id: int
    fingerprint: str
    tokenizer_json: str
    n_train_docs: int
    n_val_docs: int
    shard_dir: str = ""

    def __reduce__(self) -> Any:
        if not self.shard_dir:  # an in-memory TokenData (tests) pickles whole
            return (TokenData, tuple(getattr(self, f) for f in self.__dataclass_fields__))
        return (open_shards, (self.shard_dir, self.fingerprint))


def fingerprint(parts: list[Any], tokenizer_identity: str, val_every: int) -> str:
    """Hash of the corpus identity (file content hashes and reading settings) and tokenizer
    settings, computable without reading documents."""
    payload = [FORMAT_VERSION, tokenizer_identity, val_every, parts]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def cache_folder(configured: str, override: Path | None) -> Path:
    """The cache folder: `override`, else `configured` (data.cache_dir), else $PROGTUNE_CACHE,
    else ~/.cache/progtune; created if missing."""
    folder = Path(
        override
        or configured
        or os.environ.get("PROGTUNE_CACHE")
        or Path.home() / ".cache" / "progtune"
    ).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"data.cache_dir: cannot create {folder} ({exc.strerror}): "
            "set data.cache_dir or PROGTUNE_CACHE to a writable folder"
        ) from None
    return folder


def cache_path(folder: Path, fingerprint: str) -> Path:
    """The shard folder of `fingerprint` inside the cache folder."""
    return folder / f"tokens-{fingerprint}"


def open_shards(path: str | Path, fingerprint: str) -> TokenData:
    """TokenData over the shard folder `path` (memmaps); raises when missing or damaged."""
    path = Path(path)
    try:
        index = json.loads((path / "index.json").read_text())
        if index["format"] != FORMAT_VERSION or index["fingerprint"] != fingerprint:
            raise ValueError("stale cache entry")
        dtype = np.dtype(index["dtype"])
        arrays = {}
        for split in SPLITS:
            n, file = int(index[f"{split}_tokens"]), path / f"{split}.bin"
            if n < 1 or file.stat().st_size != n * dtype.itemsize:
                raise ValueError(f"{file.name} does not hold {n} tokens")
            arrays[split] = np.memmap(file, dtype=dtype, mode="r", shape=(n,))
        return TokenData(
            **arrays,
            tokenizer_json=(path / "tokenizer.json").read_text(encoding="utf-8"),
            shard_dir=str(path),
            **{k: index[k] for k in _META_KEYS},
        )
    except FileNotFoundError as exc:
        raise DataError(
            f"token shards {path} are missing ({exc.filename}): on a cluster, set data.cache_dir "
            "(or PROGTUNE_CACHE) to a folder every node shares"
        ) from None
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise DataError(f"token shards {path} are damaged ({exc})") from None


def load_cached(path: Path, fingerprint: str) -> TokenData | None:
    """The cached TokenData at `path`, or None when missing, stale or damaged (then rebuild)."""
    if not path.exists():
        return None
    try:
        return open_shards(path, fingerprint)
    except DataError as exc:
        logger.warning("rebuilding unreadable token cache %s (%s)", path, exc)
        return None


def new_build_folder(path: Path) -> Path:
    """A hidden temp folder beside `path` for one builder (concurrent builders never share)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    return tmp


def publish(tmp: Path, path: Path, meta: dict[str, Any], dtype: Any, counts: dict) -> TokenData:
    """Write the index into the finished temp folder `tmp` and rename it to `path`.

    When another builder published first, its (identical) entry is kept and `tmp` removed; a
    damaged entry at `path` is moved aside and replaced.
    """
    index = {"format": FORMAT_VERSION, "dtype": np.dtype(dtype).name, **meta}
    index.update({f"{s}_tokens": counts[s] for s in SPLITS})
    with open(tmp / "index.json", "w") as f:
        json.dump(index, f)
        f.flush()
        os.fsync(f.fileno())
    for attempt in range(2):
        try:
            os.rename(tmp, path)
            break
        except OSError:  # the target exists (another builder, or a damaged entry)
            if load_cached(path, meta["fingerprint"]) is not None or attempt:
                shutil.rmtree(tmp, ignore_errors=True)
                break
            trash = new_build_folder(path)
            shutil.rmtree(trash)
            try:
                os.rename(path, trash)
                shutil.rmtree(trash, ignore_errors=True)
            except OSError:
                pass  # another process moved it already
    return open_shards(path, meta["fingerprint"])
