"""Finding and reading corpus documents (stdlib, files, folders, globs, hf: data sets)."""

from __future__ import annotations

import glob
import itertools
import json
import logging
import os
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from progtune.data_settings import DataSettings
from progtune.errors import DataError, one_line_reason

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
_EXCLUDED_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages"}
_JSONL_SUFFIXES = {".jsonl", ".ndjson"}


Piece = tuple[str, bool]  # (text, ends_document): large files come as several pieces
LARGE_FILE_BYTES = 8 << 20  # text files above this are read in line-aligned pieces
PIECE_BYTES = 1 << 20


def corpus_files(s: DataSettings) -> list[Path]:
    """The corpus's files in a deterministic order (none for hf: data sets)."""
    if s.corpus == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        return _walk(root, lambda d: d in _EXCLUDED_PARTS, lambda f: f.endswith(".py"))
    if s.corpus.startswith("hf:"):
        return []
    return _corpus_files(s.corpus)


def documents(s: DataSettings, files: list[Path], chunked: bool) -> Iterator[Piece]:
    """The documents as a lazy stream of pieces: blanks dropped, the first `max_bytes` kept,
    each cut into ~64 KB chunks when `chunked` (memory: one piece, not the corpus)."""
    stream = _drop_blank(_raw_pieces(s, files, peek=False))
    if s.max_bytes:
        stream = _first_bytes(stream, s.max_bytes)
    return _chunked(stream) if chunked else stream


def needs_chunks(s: DataSettings, files: list[Path]) -> bool:
    """Whether documents must be chunked (fewer than `val_every`); raises when the corpus has
    no text or too few documents for both splits. Reads at most `val_every` documents."""
    stream = _drop_blank(_raw_pieces(s, files, peek=True))
    n = _count_documents(_first_bytes(stream, s.max_bytes) if s.max_bytes else stream, s.val_every)
    if n == 0:
        raise DataError(
            f"data.corpus={s.corpus!r} holds no text (only empty or whitespace "
            "documents): point it at a corpus with text"
        )
    if n >= s.val_every:
        return False
    n = _count_documents(documents(s, files, chunked=True), s.val_every)
    if n < 2:
        raise DataError(
            f"data.corpus has {n} document(s), fewer than 2: add documents or raise data.max_bytes"
        )
    if n < s.val_every:
        raise DataError(
            f"data.corpus has {n} documents, so the validation split (every "
            f"{s.val_every}th) is empty: lower data.val_every or add documents"
        )
    return True


def _count_documents(stream: Iterator[Piece], limit: int) -> int:
    n = 0
    for _, end in stream:
        n += end
        if n >= limit:
            break
    return n


def _raw_pieces(s: DataSettings, files: list[Path], peek: bool) -> Iterator[Piece]:
    """Every document in order; `peek` stands a large text file in by one placeholder piece."""
    if s.corpus.startswith("hf:"):
        yield from stream_hf(s)
        return
    for p in files:
        if s.corpus == "stdlib":
            try:
                yield _read_text(p), True
            except DataError:  # users cannot fix their interpreter's files: skip, don't fail
                logger.warning("skipping non-UTF-8 standard library file %s", p)
        elif p.suffix == ".parquet":
            yield from ((t, True) for t in _read_parquet(p, s.text_column))
        elif p.suffix in _JSONL_SUFFIXES:
            yield from ((t, True) for t in _read_jsonl(p, s.text_column))
        elif p.stat().st_size > LARGE_FILE_BYTES:
            yield from [("x", True)] if peek else _text_pieces(p)
        else:
            yield _read_text(p), True


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


def _text_pieces(path: Path) -> Iterator[Piece]:
    """A large text file as line-aligned pieces of ~PIECE_BYTES; the last one ends the document."""
    carry = b""
    with open(path, "rb") as f:
        while block := f.read(PIECE_BYTES):
            block = carry + block
            cut = block.rfind(b"\n") + 1 or _utf8_boundary(block)
            carry = block[cut:]
            yield _decode(block[:cut], path), False
    yield _decode(carry, path), True


def _utf8_boundary(raw: bytes) -> int:
    """A cut that splits no UTF-8 character: before the last character's lead byte (for a line
    longer than a piece; the moved bytes start the next piece)."""
    lead = len(raw) - 1
    while lead > 0 and len(raw) - lead < 4 and (raw[lead] & 0xC0) == 0x80:
        lead -= 1
    return lead if lead >= 0 and raw[lead] >= 0xC0 else len(raw)


def _decode(raw: bytes, path: Path) -> str:
    try:
        if b"\0" in raw:
            raise UnicodeError
        return raw.decode("utf-8")
    except UnicodeError:
        raise DataError(
            f"data.corpus: {path} is binary (NUL bytes or not UTF-8): remove it "
            "from data.corpus or convert it to UTF-8 text"
        ) from None


def _read_text(path: Path) -> str:
    return _decode(path.read_bytes(), path)


def _read_parquet(path: Path, column: str) -> Iterator[str]:
    """The column's texts, one record batch at a time."""
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
        names = file.schema_arrow.names
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(
            f"data.corpus: {path} is not a readable Parquet file ({one_line_reason(exc)}): "
            "fix or remove it"
        ) from None
    if column not in names:
        raise DataError(
            f"data.text_column={column!r} is not a column of {path} (columns: "
            f"{', '.join(names)}): set data.text_column to the text column"
        )
    for batch in file.iter_batches(batch_size=1024, columns=[column]):
        yield from _texts(batch.column(0).to_pylist(), path, column)


def _read_jsonl(path: Path, column: str) -> Iterator[str]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            line = _decode(raw, path)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"data.corpus: {path} line {n} is not JSON ({one_line_reason(exc)}): "
                    "fix the line or remove the file"
                ) from None
            if not isinstance(row, dict) or column not in row:
                keys = ", ".join(row) if isinstance(row, dict) else "none"
                raise DataError(
                    f"data.text_column={column!r} is missing in {path} line {n} "
                    f"(columns: {keys}): set data.text_column to the text column"
                )
            yield from _texts([row[column]], path, column)


def _texts(values: list[Any], where: Any, column: str) -> list[str]:
    if any(v is not None and not isinstance(v, str) for v in values):
        raise DataError(
            f"data.text_column={column!r} in {where} holds non-text values: "
            "point data.text_column at a string column"
        )
    return [v for v in values if v is not None]


def stream_hf(s: DataSettings, **load_args: Any) -> Iterator[Piece]:
    """Rows of `hf:NAME` streamed with datasets (streaming=True): nothing is held whole.
    `load_args` go to datasets.load_dataset (e.g. data_files for a local Parquet/JSON set)."""
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
            f"data.corpus={s.corpus!r} needs the datasets package: pip install 'progtune[datasets]'"
            " (or pip install datasets)"
        ) from None
    try:
        ds = datasets.load_dataset(
            name, s.hf_config or None, split=s.hf_split, streaming=True, **load_args
        )
        rows = iter(ds)
        first = next(rows, None)
    except Exception as exc:  # network, unknown name, unknown config/split
        raise DataError(
            f"data.corpus={s.corpus!r} could not be loaded ({one_line_reason(exc)}): check the "
            "name, data.hf_config and data.hf_split"
        ) from None
    if first is not None and s.text_column not in first:
        raise DataError(
            f"data.text_column={s.text_column!r} is not a column of {name} "
            f"(columns: {', '.join(first)}): set data.text_column"
        )
    for row in itertools.chain([first] if first is not None else [], rows):
        yield from ((t, True) for t in _texts([row[s.text_column]], name, s.text_column))


def _drop_blank(stream: Iterator[Piece]) -> Iterator[Piece]:
    """Drop whitespace-only documents (a document of several pieces is kept whole)."""
    mid = False
    for text, end in stream:
        if mid or not end or text.strip():
            yield text, end
        mid = not end


def _first_bytes(stream: Iterator[Piece], max_bytes: int) -> Iterator[Piece]:
    """Documents in order up to `max_bytes` UTF-8 bytes, the last one cut at a line boundary."""
    total, mid = 0, False
    for text, end in stream:
        size = len(text.encode("utf-8"))
        if total + size > max_bytes:
            head = _cut(text, max_bytes - total)
            if mid or head.strip():
                yield head, True
            return
        total, mid = total + size, not end
        yield text, end


def _cut(text: str, limit: int) -> str:
    """The longest line-aligned prefix of `text` with at most `limit` UTF-8 bytes."""
    head = text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")
    return head[: head.rfind("\n") + 1] or head


def _chunked(stream: Iterator[Piece]) -> Iterator[Piece]:
    """Every document cut into chunks of at most CHUNK_BYTES characters at line boundaries."""
    cur: list[str] = []
    size = 0
    for text, end in stream:
        for line in text.splitlines(keepends=True):
            if size and size + len(line) > CHUNK_BYTES:
                if (chunk := "".join(cur)).strip():
                    yield chunk, True
                cur, size = [], 0
            cur.append(line)
            size += len(line)
        if end:
            if (chunk := "".join(cur)).strip():
                yield chunk, True
            cur, size = [], 0
