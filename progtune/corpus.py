"""Finding and reading corpus documents (stdlib, files, folders, globs, hf: data sets)."""

from __future__ import annotations

import glob
import json
import logging
import os
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

from progtune.data_settings import DataSettings
from progtune.errors import DataError, one_line_reason

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
_EXCLUDED_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages"}
_JSONL_SUFFIXES = {".jsonl", ".ndjson"}


def read_corpus(s: DataSettings) -> list[str]:
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


def split_documents(docs: list[str], s: DataSettings) -> list[str]:
    """Drop blank documents, keep the first `max_bytes`, chunk when fewer than `val_every`."""
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(
            f"data.corpus={s.corpus!r} holds no text (only empty or whitespace "
            "documents): point it at a corpus with text"
        )
    if s.max_bytes:
        docs = _first_bytes(docs, s.max_bytes)
    if len(docs) < s.val_every:
        docs = [c for d in docs for c in _chunks(d)]
    if len(docs) < 2:
        raise DataError(
            f"data.corpus has {len(docs)} document(s), fewer than 2: add "
            "documents or raise data.max_bytes"
        )
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
            f"data.corpus: {path} is not a readable Parquet file ({one_line_reason(exc)}): "
            "fix or remove it"
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
                f"data.corpus: {path} line {n} is not JSON ({one_line_reason(exc)}): "
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
            f"data.corpus={s.corpus!r} could not be loaded ({one_line_reason(exc)}): check the "
            "name, data.hf_config and data.hf_split"
        ) from None
    if s.text_column not in ds.column_names:
        raise DataError(
            f"data.text_column={s.text_column!r} is not a column of {name} "
            f"(columns: {', '.join(ds.column_names)}): set data.text_column"
        )
    return _texts(list(ds[s.text_column]), name, s.text_column)


def _first_bytes(docs: list[str], max_bytes: int) -> list[str]:
    """Documents in order up to `max_bytes` UTF-8 bytes, the last one cut at a line boundary."""
    kept, total = [], 0
    for d in docs:
        size = len(d.encode("utf-8"))
        if total + size > max_bytes:
            head = _cut(d, max_bytes - total)
            if head.strip():
                kept.append(head)
            break
        kept.append(d)
        total += size
    return kept


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
