"""Corpora -> byte-level BPE tokenizer -> cached, fingerprinted token streams."""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from progtune.atomic import write_atomic
from progtune.errors import DataError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when documents, splitting or the cache layout change meaning
SPECIAL_TOKENS = ("<|endoftext|>", "<pad>", "<mask>")
CHUNK_BYTES = 64 * 1024
_EXCLUDED_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages"}
_JSONL_SUFFIXES = {".jsonl", ".ndjson"}


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
    cache_dir: str = ""


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
    tok_source = None if s.tokenizer == "bpe" else _tokenizer_file(s.tokenizer)
    docs = _split_documents(_read_corpus(s), s)
    train_docs = [d for i, d in enumerate(docs) if (i + 1) % s.val_every]
    val_docs = [d for i, d in enumerate(docs) if not (i + 1) % s.val_every]
    if not train_docs or not val_docs:
        raise DataError(
            f"data.corpus has {len(docs)} documents, so the validation split (every "
            f"{s.val_every}th) is empty: lower data.val_every or add documents"
        )
    fingerprint = _fingerprint(docs, s, tok_source)
    folder = _cache_folder(s, cache_dir)
    path = folder / f"tokens-{fingerprint}.npz"
    cached = _load_cache(path, fingerprint)
    if cached is not None:
        return cached
    start = time.perf_counter()
    if tok_source is None:
        tokenizer = _train_bpe(train_docs, s.vocab_size)
    else:
        tokenizer = _load_tokenizer_file(tok_source)
    ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = np.uint16 if vocab <= 2**16 else np.int32
    data = TokenData(
        train=_encode(tokenizer, train_docs, ids[0], dtype),
        val=_encode(tokenizer, val_docs, ids[0], dtype),
        vocab_size=vocab,
        eos_id=ids[0],
        pad_id=ids[1],
        mask_id=ids[2],
        fingerprint=fingerprint,
        tokenizer_json=tokenizer.to_str(),
        n_train_docs=len(train_docs),
        n_val_docs=len(val_docs),
    )
    logger.info(
        "tokenized %d docs into %d tokens in %.1f s",
        len(docs),
        data.train.size + data.val.size,
        time.perf_counter() - start,
    )
    _save_cache(path, data)
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


def _read_corpus(s: DataSettings) -> list[str]:
    """All documents of the corpus in a deterministic order, before splitting."""
    if s.corpus == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        files = _walk(root, lambda d: d in _EXCLUDED_PARTS, lambda f: f.endswith(".py"))
        sources = []
        for p in files:
            try:
                sources.append(_read_text(p))
            except DataError:  # users cannot fix their interpreter's files: skip, don't fail
                logger.warning("skipping non-UTF-8 standard library file %s", p)
        return sources
    if s.corpus.startswith("hf:"):
        return _read_hf(s)
    docs: list[str] = []
    for p in _corpus_files(s.corpus):
        if p.suffix == ".parquet":
            docs += _read_parquet(p, s.text_column)
        elif p.suffix in _JSONL_SUFFIXES:
            docs += _read_jsonl(p, s.text_column)
        else:
            docs.append(_read_text(p))
    return docs


def _corpus_files(corpus: str) -> list[Path]:
    files: list[Path] = []
    for item in (x.strip() for x in corpus.split(",")):
        if not item:
            continue
        path = Path(item).expanduser()
        if glob.has_magic(item):
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
            if not matches:
                raise DataError(f"data.corpus: the glob {item!r} matches no files: fix the pattern")
            for m in matches:
                files += _folder_files(m) if m.is_dir() else [m]
        elif path.is_dir():
            files += _folder_files(path)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(
                f"data.corpus: {item!r} does not exist: give an existing file, "
                "folder or glob, or 'stdlib'"
            )
    if not files:
        raise DataError(f"data.corpus={corpus!r} contains no files: point it at text files")
    return files


def _folder_files(folder: Path) -> list[Path]:
    # Hidden files and folders (.git, .DS_Store, editor swap files) are never corpus content.
    return _walk(folder, lambda d: d.startswith("."), lambda f: not f.startswith("."))


def _walk(root: Path, skip_dir: Callable[[str], bool], keep: Callable[[str], bool]) -> list[Path]:
    """Files below `root` sorted by relative path. A pruned os.walk: the stdlib folder's
    site-packages can hold many times more files than the stdlib itself."""
    found: list[str] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not skip_dir(d)]
        rel = Path(folder).relative_to(root)
        found += [(rel / n).as_posix() for n in names if keep(n)]
    return [root / r for r in sorted(found)]


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        if b"\0" in raw:
            raise UnicodeError
        return raw.decode("utf-8")
    except UnicodeError:
        raise DataError(
            f"data.corpus: {path} is binary (NUL bytes or not UTF-8): remove it "
            "from data.corpus or convert it to UTF-8 text"
        ) from None


def _read_parquet(path: Path, column: str) -> list[str]:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        if column in names:
            values = pq.read_table(path, columns=[column]).column(column).to_pylist()
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(
            f"data.corpus: {path} is not a readable Parquet file ({_why(exc)}): fix or remove it"
        ) from None
    if column not in names:
        raise DataError(
            f"data.text_column={column!r} is not a column of {path} (columns: "
            f"{', '.join(names)}): set data.text_column to the text column"
        )
    return _texts(values, path, column)


def _read_jsonl(path: Path, column: str) -> list[str]:
    values = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"data.corpus: {path} line {n} is not JSON ({_why(exc)}): "
                "fix the line or remove the file"
            ) from None
        if not isinstance(row, dict) or column not in row:
            keys = ", ".join(row) if isinstance(row, dict) else "none"
            raise DataError(
                f"data.text_column={column!r} is missing in {path} line {n} "
                f"(columns: {keys}): set data.text_column to the text column"
            )
        values.append(row[column])
    return _texts(values, path, column)


def _texts(values: list[Any], where: Any, column: str) -> list[str]:
    if any(v is not None and not isinstance(v, str) for v in values):
        raise DataError(
            f"data.text_column={column!r} in {where} holds non-text values: "
            "point data.text_column at a string column"
        )
    return [v for v in values if v is not None]


def _read_hf(s: DataSettings) -> list[str]:
    name = s.corpus[3:]
    if not s.allow_download:
        raise DataError(
            f"data.corpus={s.corpus!r} downloads a Hugging Face dataset: pass "
            "data.allow_download=true to allow it, or use a local corpus"
        )
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"data.corpus={s.corpus!r} needs the datasets package: pip install datasets"
        ) from None
    try:
        ds = datasets.load_dataset(name, s.hf_config or None, split=s.hf_split)
    except Exception as exc:  # network, unknown name, unknown config/split
        raise DataError(
            f"data.corpus={s.corpus!r} could not be loaded ({_why(exc)}): check the "
            "name, data.hf_config and data.hf_split"
        ) from None
    if s.text_column not in ds.column_names:
        raise DataError(
            f"data.text_column={s.text_column!r} is not a column of {name} "
            f"(columns: {', '.join(ds.column_names)}): set data.text_column"
        )
    return _texts(list(ds[s.text_column]), name, s.text_column)


def _split_documents(docs: list[str], s: DataSettings) -> list[str]:
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(
            f"data.corpus={s.corpus!r} holds no text (only empty or whitespace "
            "documents): point it at a corpus with text"
        )
    if s.max_bytes:
        kept, total = [], 0
        for d in docs:
            size = len(d.encode("utf-8"))
            if total + size > s.max_bytes:
                head = _cut(d, s.max_bytes - total)
                if head.strip():
                    kept.append(head)
                break
            kept.append(d)
            total += size
        docs = kept
    if len(docs) < s.val_every:
        docs = [c for d in docs for c in _chunks(d)]
    if len(docs) < 2:
        raise DataError(
            f"data.corpus has {len(docs)} document(s), fewer than 2: add "
            "documents or raise data.max_bytes"
        )
    return docs


def _why(exc: BaseException) -> str:
    """An exception's message squeezed onto one line (library messages span several)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _cut(text: str, limit: int) -> str:
    """The longest line-aligned prefix of `text` with at most `limit` UTF-8 bytes."""
    head = text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")
    return head[: head.rfind("\n") + 1] or head


def _chunks(text: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        if size and size + len(line) > CHUNK_BYTES:
            out.append("".join(cur))
            cur, size = [], 0
        cur.append(line)
        size += len(line)
    out.append("".join(cur))
    return [c for c in out if c.strip()]


def _tokenizer_file(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise DataError(
            f"data.tokenizer={spec!r} is neither 'bpe' nor an existing "
            "tokenizer.json or folder holding one: fix the path or use 'bpe'"
        )
    return path


def _load_tokenizer_file(path: Path) -> Any:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise DataError(
            f"data.tokenizer={str(path)!r} is not a tokenizers JSON file ({_why(exc)}): "
            "point it at a tokenizer.json or use 'bpe'"
        ) from None
    # EOS/pad/mask are needed by every model family (document separation, BERT masking).
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def _train_bpe(docs: list[str], vocab_size: int) -> Any:
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


def _encode(tokenizer: Any, docs: list[str], eos: int, dtype: Any) -> np.ndarray:
    encoded = tokenizer.encode_batch_fast(docs, add_special_tokens=False)
    out = np.empty(sum(len(e.ids) + 1 for e in encoded), dtype=dtype)
    pos = 0
    for e in encoded:
        out[pos : pos + len(e.ids)] = e.ids
        out[pos + len(e.ids)] = eos
        pos += len(e.ids) + 1
    return out


def _fingerprint(docs: list[str], s: DataSettings, tok_source: Path | None) -> str:
    """Hash of the documents and tokenizer settings, computable without tokenizing."""
    import tokenizers

    h = hashlib.sha256()
    if tok_source is None:  # a new tokenizers release may learn different merges
        tok = f"bpe:{s.vocab_size}:{tokenizers.__version__}"
    else:
        tok = "file:" + hashlib.sha256(tok_source.read_bytes()).hexdigest()
    h.update(json.dumps([FORMAT_VERSION, tok, s.val_every, len(docs)]).encode())
    for d in docs:
        raw = d.encode("utf-8")
        h.update(len(raw).to_bytes(8, "little"))  # length prefix: document borders count
        h.update(raw)
    return h.hexdigest()[:16]


def _cache_folder(s: DataSettings, override: Path | None) -> Path:
    folder = Path(
        override
        or s.cache_dir
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


def _load_cache(path: Path, fingerprint: str) -> TokenData | None:
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


_META_KEYS = (
    "vocab_size",
    "eos_id",
    "pad_id",
    "mask_id",
    "fingerprint",
    "n_train_docs",
    "n_val_docs",
)


def _save_cache(path: Path, data: TokenData) -> None:
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
