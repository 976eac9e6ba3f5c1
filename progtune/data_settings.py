"""The `data.*` settings, shared by the corpus reader, the tokenizer and the token cache."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataSettings:
    """The `data.*` config section; prepare_data's docstring says how documents are formed."""

    corpus: str = "stdlib"
    text_column: str = "text"
    hf_config: str = ""
    hf_split: str = "train"
    allow_download: bool = False
    tokenizer: str = "bpe"
    vocab_size: int = 2048
    val_every: int = 20
    max_bytes: int = 0
    max_tokens: int = 0
    cache_dir: str = ""
