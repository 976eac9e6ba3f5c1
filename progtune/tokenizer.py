"""Byte-level BPE: train one on the training documents or load a given tokenizer.json; encode."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from progtune.errors import DataError, one_line_reason

SPECIAL_TOKENS = ("<|endoftext|>", "<pad>", "<mask>")
BATCH_CHARS = 4 << 20  # text per encode_batch call: bounds memory, keeps the threads busy


def tokenizer_file(spec: str) -> Path:
    """The tokenizer.json that `data.tokenizer` names (a file, or a folder holding one)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise DataError(
            f"data.tokenizer={spec!r} is neither 'bpe' nor an existing "
            "tokenizer.json or folder holding one: fix the path or use 'bpe'"
        )
    return path


def tokenizer_identity(vocab_size: int, source: Path | None) -> str:
    """What the token cache keys on: a trained BPE's size and library version, or a file's hash."""
    import tokenizers

    if source is None:  # a new tokenizers release may learn different merges
        return f"bpe:{vocab_size}:{tokenizers.__version__}"
    return "file:" + hashlib.sha256(source.read_bytes()).hexdigest()


def load_tokenizer_file(path: Path) -> Any:
    """A `tokenizers.Tokenizer` from a tokenizer.json, with progtune's special tokens added."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise DataError(
            f"data.tokenizer={str(path)!r} is not a tokenizers JSON file "
            f"({one_line_reason(exc)}): point it at a tokenizer.json or use 'bpe'"
        ) from None
    # EOS/pad/mask are needed by every model family (document separation, BERT masking).
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def train_bpe(texts: Iterable[str], vocab_size: int) -> Any:
    """Train a deterministic byte-level BPE on `texts` (streamed: tokenizers keeps word counts,
    not the texts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    learned = tokenizer.get_vocab_size()
    if learned < vocab_size:
        raise DataError(
            f"data.vocab_size={vocab_size} but the corpus only supports {learned} "
            f"tokens: lower data.vocab_size to {learned} or use a larger corpus"
        )
    return tokenizer


def shard_dtype(vocab_size: int) -> Any:
    """The token id dtype of the shard files: uint16 when the vocabulary fits, else uint32."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def encode_documents(
    tokenizer: Any,
    pieces: Iterable[tuple[str, bool, int]],
    eos: int,
    sinks: tuple[BinaryIO, ...],
    max_tokens: int = 0,
) -> tuple[list[int], list[int]]:
    """Encode (text, ends_document, split) pieces in batches of ~BATCH_CHARS and append the ids
    (EOS after every document) to `sinks[split]`; stop after `max_tokens` in all (0 = no cap).
    Memory is bounded by one batch. Returns tokens and documents written per split."""
    dtype = shard_dtype(tokenizer.get_vocab_size(with_added_tokens=True))
    tokens, docs = [0] * len(sinks), [0] * len(sinks)
    batch: list[tuple[str, bool, int]] = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece[0])
        if size >= BATCH_CHARS:
            _write_batch(tokenizer, batch, eos, dtype, sinks, tokens, docs, max_tokens)
            batch, size = [], 0
            if max_tokens and sum(tokens) >= max_tokens:
                return tokens, docs
    _write_batch(tokenizer, batch, eos, dtype, sinks, tokens, docs, max_tokens)
    return tokens, docs


def _write_batch(
    tokenizer: Any,
    batch: list[tuple[str, bool, int]],
    eos: int,
    dtype: Any,
    sinks: tuple[BinaryIO, ...],
    tokens: list[int],
    docs: list[int],
    max_tokens: int,
) -> None:
    """One encode_batch call; updates `tokens` and `docs` (per split) in place."""
    if not batch:
        return
    encoded = tokenizer.encode_batch_fast([t for t, _, _ in batch], add_special_tokens=False)
    parts: list[list[np.ndarray]] = [[] for _ in sinks]
    left = max_tokens - sum(tokens) if max_tokens else -1  # -1: no cap
    for (_, end, split), e in zip(batch, encoded, strict=True):
        ids = np.array([*e.ids, eos] if end else e.ids, dtype=dtype)
        if left >= 0:  # the cap falls in stream order, so both splits keep their share
            ids, left = ids[:left], max(0, left - ids.size)
        parts[split].append(ids)
        docs[split] += end
    for split, arrays in enumerate(parts):
        out = np.concatenate(arrays) if arrays else np.empty(0, dtype=dtype)
        out.tofile(sinks[split])
        tokens[split] += out.size
