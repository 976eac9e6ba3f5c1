"""Corpora -> byte-level BPE tokenizer -> cached, fingerprinted, memory-mapped token shards.

prepare_data orchestrates; the jobs live beside it: corpus.py reads documents, tokenizer.py
trains/loads the tokenizer and encodes, token_cache.py fingerprints and caches the result.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from progtune.corpus import Piece, corpus_files, documents, needs_chunks
from progtune.data_settings import DataSettings
from progtune.errors import DataError
from progtune.file_hashes import content_hashes
from progtune.token_cache import (
    TokenData,
    cache_folder,
    cache_path,
    fingerprint,
    load_cached,
    new_build_folder,
    publish,
)
from progtune.tokenizer import (
    SPECIAL_TOKENS,
    encode_documents,
    load_tokenizer_file,
    shard_dtype,
    tokenizer_file,
    tokenizer_identity,
    train_bpe,
)

__all__ = ["DataSettings", "TokenData", "load_tokenizer", "prepare_data"]

logger = logging.getLogger(__name__)

BPE_SAMPLE_BYTES = 64 << 20  # the BPE trains on the first 64 MiB of training text


def prepare_data(settings: Any, cache_dir: Path | None = None) -> TokenData:
    """Stream the corpus into memory-mapped token shards (or open the cached ones).

    Documents: each text file is one document, each Parquet/JSONL row one document;
    whitespace-only documents are dropped. `max_bytes` keeps documents in order until that many
    UTF-8 bytes (the last one cut at a line boundary). If fewer than `val_every` documents remain,
    every document is split into ~64 KB chunks at line boundaries so a validation split can exist.
    Document i (0-based, in order) goes to validation when (i + 1) % val_every == 0. The BPE
    tokenizer is trained on the first BPE_SAMPLE_BYTES of training documents. `max_tokens` cuts
    the token stream (both splits together). `cache_dir` overrides `data.cache_dir`.
    A cache hit stats the corpus files and reads none whose size and mtime are unchanged.
    """
    s = DataSettings(**{f.name: getattr(settings, f.name, f.default) for f in fields(DataSettings)})
    _check_settings(s)
    tok_source = None if s.tokenizer == "bpe" else tokenizer_file(s.tokenizer)
    folder = cache_folder(s.cache_dir, cache_dir)
    files = corpus_files(s)
    key = fingerprint(
        _corpus_identity(s, files, folder),
        tokenizer_identity(s.vocab_size, tok_source),
        s.val_every,
    )
    path = cache_path(folder, key)
    cached = load_cached(path, key)
    if cached is not None:
        return cached
    start = time.perf_counter()
    chunked = needs_chunks(s, files)
    tokenizer = (
        train_bpe(_bpe_sample(documents(s, files, chunked), s.val_every), s.vocab_size)
        if tok_source is None
        else load_tokenizer_file(tok_source)
    )
    encode_start = time.perf_counter()
    data = _write_shards(s, files, chunked, tokenizer, key, path)
    logger.info(
        "tokenized %d docs into %d tokens in %.1f s (tokenizer %.1f s, encoding %.1f s)",
        data.n_train_docs + data.n_val_docs,
        data.train.size + data.val.size,
        time.perf_counter() - start,
        encode_start - start,
        time.perf_counter() - encode_start,
    )
    return data


def load_tokenizer(data: TokenData) -> Any:
    """Rebuild the `tokenizers.Tokenizer` that produced `data`."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(data.tokenizer_json)


def _check_settings(s: DataSettings) -> None:
    if s.tokenizer == "bpe" and s.vocab_size < 256 + len(SPECIAL_TOKENS):
        raise DataError(
            f"data.vocab_size={s.vocab_size} is below 259 (256 bytes + 3 special "
            "tokens): set data.vocab_size to 259 or more"
        )
    if s.val_every < 2:
        raise DataError(
            f"data.val_every={s.val_every} leaves no training documents: set it to 2 or more"
        )
    if s.max_bytes < 0:
        raise DataError(f"data.max_bytes={s.max_bytes} is negative: use 0 (whole corpus) or more")
    if s.max_tokens < 0:
        raise DataError(f"data.max_tokens={s.max_tokens} is negative: use 0 (all tokens) or more")


def _corpus_identity(s: DataSettings, files: list[Path], folder: Path) -> list[Any]:
    """What the documents depend on, without reading them: each file's kind and content hash
    (remembered by size and mtime), or an hf: data set's name; and the reading settings."""
    if s.corpus.startswith("hf:"):
        source: list[Any] = [s.corpus, s.hf_config, s.hf_split]
    else:
        hashes = content_hashes(files, folder)
        source = [[p.suffix, h] for p, h in zip(files, hashes, strict=True)]
        source.insert(0, s.corpus == "stdlib")  # stdlib skips non-UTF-8 files instead of failing
    return [source, s.text_column, s.max_bytes, s.max_tokens, BPE_SAMPLE_BYTES]


def _with_split(stream: Iterator[Piece], val_every: int) -> Iterator[tuple[str, bool, int]]:
    """Tag pieces with their split: document i goes to validation (1) when (i + 1) % val_every
    == 0, else to training (0)."""
    i = 0
    for text, end in stream:
        yield text, end, 0 if (i + 1) % val_every else 1
        i += end


def _bpe_sample(stream: Iterator[Piece], val_every: int) -> Iterator[str]:
    """Training pieces until BPE_SAMPLE_BYTES characters (a bounded iterator for the trainer)."""
    seen = 0
    for text, _, split in _with_split(stream, val_every):
        if split == 0:
            yield text
            seen += len(text)
            if seen >= BPE_SAMPLE_BYTES:
                return


def _write_shards(
    s: DataSettings, files: list[Path], chunked: bool, tokenizer: Any, key: str, path: Path
) -> TokenData:
    """Encode the documents into shard files in a temp folder, then publish it at `path`."""
    ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    tmp = new_build_folder(path)
    try:
        with open(tmp / "train.bin", "wb") as train, open(tmp / "val.bin", "wb") as val:
            pieces = _with_split(documents(s, files, chunked), s.val_every)
            tokens, docs = encode_documents(tokenizer, pieces, ids[0], (train, val), s.max_tokens)
            for f in (train, val):
                f.flush()
                os.fsync(f.fileno())
        if not all(tokens):
            empty = "validation" if tokens[0] else "training"
            raise DataError(
                f"data.max_tokens={s.max_tokens} leaves the {empty} split empty: raise "
                "data.max_tokens or lower data.val_every"
            )
        (tmp / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
        meta = {"vocab_size": vocab, "eos_id": ids[0], "pad_id": ids[1], "mask_id": ids[2]}
        meta.update(fingerprint=key, n_train_docs=docs[0], n_val_docs=docs[1])
        counts = {"train": tokens[0], "val": tokens[1]}
        return publish(tmp, path, meta, shard_dtype(vocab), counts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when published
