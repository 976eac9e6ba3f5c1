"""Byte-level BPE: train one on the training documents or load a given tokenizer.json; encode."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from progtune.errors import DataError, one_line_reason

SPECIAL_TOKENS = ("<|endoftext|>", "<pad>", "<mask>")


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


def train_bpe(docs: list[str], vocab_size: int) -> Any:
    """Train a deterministic byte-level BPE on `docs`."""
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
    tokenizer.train_from_iterator(docs, trainer=trainer, length=len(docs))
    learned = tokenizer.get_vocab_size()
    if learned < vocab_size:
        raise DataError(
            f"data.vocab_size={vocab_size} but the corpus only supports {learned} "
            f"tokens: lower data.vocab_size to {learned} or use a larger corpus"
        )
    return tokenizer


def encode_documents(tokenizer: Any, docs: list[str], eos: int, dtype: Any) -> np.ndarray:
    """One token stream: every document's ids followed by `eos`."""
    encoded = tokenizer.encode_batch_fast(docs, add_special_tokens=False)
    out = np.empty(sum(len(e.ids) + 1 for e in encoded), dtype=dtype)
    pos = 0
    for e in encoded:
        out[pos : pos + len(e.ids)] = e.ids
        out[pos + len(e.ids)] = eos
        pos += len(e.ids) + 1
    return out
