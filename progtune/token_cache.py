"""Token streams (TokenData), the fingerprint that keys them and their on-disk .npz cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from progtune.atomic import write_atomic
from progtune.errors import DataError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when documents, splitting or the cache layout change meaning
_META_KEYS = (
    "vocab_size",
    "eos_id",
    "pad_id",
    "mask_id",
    "fingerprint",
    "n_train_docs",
    "n_val_docs",
)


@dataclass(frozen=True)
class TokenData:
    """Token streams (EOS after every document) plus everything needed to decode them."""

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


def fingerprint(docs: list[str], tokenizer_identity: str, val_every: int) -> str:
    """Hash of the documents and tokenizer settings, computable without tokenizing."""
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT_VERSION, tokenizer_identity, val_every, len(docs)]).encode())
    for d in docs:
        raw = d.encode("utf-8")
        h.update(len(raw).to_bytes(8, "little"))  # length prefix: document borders count
        h.update(raw)
    return h.hexdigest()[:16]


def cache_path(configured: str, override: Path | None, fingerprint: str) -> Path:
    """Where the tokens of `fingerprint` are cached; creates the folder.

    The folder: `override`, else `configured` (data.cache_dir), else $PROGTUNE_CACHE, else
    ~/.cache/progtune.
    """
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
    return folder / f"tokens-{fingerprint}.npz"


def load_cached(path: Path, fingerprint: str) -> TokenData | None:
    """The cached TokenData at `path`, or None when missing, stale or damaged (then rebuild)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode("utf-8"))
            if meta["format"] != FORMAT_VERSION or meta["fingerprint"] != fingerprint:
                raise ValueError("stale cache entry")
            return TokenData(
                train=z["train"],
                val=z["val"],
                tokenizer_json=z["tokenizer"].tobytes().decode("utf-8"),
                **{k: meta[k] for k in _META_KEYS},
            )
    except Exception as exc:  # any damage (truncated zip, bad JSON, missing key) -> rebuild
        logger.warning("rebuilding unreadable token cache %s (%s)", path, exc)
        return None


def save_cache(path: Path, data: TokenData) -> None:
    """Write atomically: concurrent builders each replace a complete file; readers never see
    a partial one."""
    meta = {"format": FORMAT_VERSION, **{k: getattr(data, k) for k in _META_KEYS}}
    write_atomic(
        path,
        lambda f: np.savez(
            f,
            train=data.train,
            val=data.val,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            tokenizer=np.frombuffer(data.tokenizer_json.encode(), dtype=np.uint8),
        ),
    )
