"""Corpora -> byte-level BPE tokenizer -> cached, fingerprinted token streams.

prepare_data orchestrates; the jobs live beside it: corpus.py reads documents, tokenizer.py
trains/loads the tokenizer and encodes, token_cache.py fingerprints and caches the result.
"""

from __future__ import annotations

import logging
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from progtune.corpus import read_corpus, split_documents
from progtune.data_settings import DataSettings
from progtune.errors import DataError
from progtune.token_cache import TokenData, cache_path, fingerprint, load_cached, save_cache
from progtune.tokenizer import (
    SPECIAL_TOKENS,
    encode_documents,
    load_tokenizer_file,
    tokenizer_file,
    tokenizer_identity,
    train_bpe,
)

__all__ = ["DataSettings", "TokenData", "load_tokenizer", "prepare_data"]

logger = logging.getLogger(__name__)


def prepare_data(settings: Any, cache_dir: Path | None = None) -> TokenData:
    """Read the corpus, split it, tokenize it (or load the cached result) and return tokens.

    Documents: each text file is one document, each Parquet/JSONL row one document;
    whitespace-only documents are dropped. `max_bytes` keeps documents in order until that many
    UTF-8 bytes (the last one cut at a line boundary). If fewer than `val_every` documents remain,
    every document is split into ~64 KB chunks at line boundaries so a validation split can exist.
    Document i (0-based, in order) goes to validation when (i + 1) % val_every == 0. The BPE
    tokenizer is trained on training documents only. `cache_dir` overrides `data.cache_dir`.
    """
    s = DataSettings(**{f.name: getattr(settings, f.name) for f in fields(DataSettings)})
    _check_settings(s)
    tok_source = None if s.tokenizer == "bpe" else tokenizer_file(s.tokenizer)
    docs = split_documents(read_corpus(s), s)
    train_docs, val_docs = _train_val_split(docs, s.val_every)
    key = fingerprint(docs, tokenizer_identity(s.vocab_size, tok_source), s.val_every)
    path = cache_path(s.cache_dir, cache_dir, key)
    cached = load_cached(path, key)
    if cached is not None:
        return cached
    start = time.perf_counter()
    data = _tokenize(train_docs, val_docs, s.vocab_size, tok_source, key)
    logger.info(
        "tokenized %d docs into %d tokens in %.1f s",
        len(docs),
        data.train.size + data.val.size,
        time.perf_counter() - start,
    )
    save_cache(path, data)
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


def _train_val_split(docs: list[str], val_every: int) -> tuple[list[str], list[str]]:
    """Document i goes to validation when (i + 1) % val_every == 0."""
    train_docs = [d for i, d in enumerate(docs) if (i + 1) % val_every]
    val_docs = [d for i, d in enumerate(docs) if not (i + 1) % val_every]
    if not train_docs or not val_docs:
        raise DataError(
            f"data.corpus has {len(docs)} documents, so the validation split (every "
            f"{val_every}th) is empty: lower data.val_every or add documents"
        )
    return train_docs, val_docs


def _tokenize(
    train_docs: list[str],
    val_docs: list[str],
    vocab_size: int,
    tok_source: Path | None,
    key: str,
) -> TokenData:
    """Train (or load) the tokenizer and encode both splits; `key` is the data's fingerprint."""
    if tok_source is None:
        tokenizer = train_bpe(train_docs, vocab_size)
    else:
        tokenizer = load_tokenizer_file(tok_source)
    ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = np.uint16 if vocab <= 2**16 else np.int32
    return TokenData(
        train=encode_documents(tokenizer, train_docs, ids[0], dtype),
        val=encode_documents(tokenizer, val_docs, ids[0], dtype),
        vocab_size=vocab,
        eos_id=ids[0],
        pad_id=ids[1],
        mask_id=ids[2],
        fingerprint=key,
        tokenizer_json=tokenizer.to_str(),
        n_train_docs=len(train_docs),
        n_val_docs=len(val_docs),
    )
