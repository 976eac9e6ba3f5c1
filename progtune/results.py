"""Parquet results: schemas, atomic writers, checked readers and compute-to-target."""

from __future__ import annotations

import contextlib
import math
import os
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from progtune.atomic import write_atomic
from progtune.config import KNOB_TYPES, list_text
from progtune.errors import ResultsError

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 1
# Nullable columns added within version 1: older files read with them empty.
ADDED_COLUMNS = frozenset({"precision", "workers", "sampling.per", "runtime.compile"})
SCHEMA_KEY = b"progtune.schema_version"
KIND_KEY = b"progtune.kind"
KINDS = ("trials", "curves")
ROLES = ("reference", "search", "confirm", "train")
STATUSES = ("completed", "stopped", "diverged", "failed", "running")

_f64, _i64, _str = pa.float64(), pa.int64(), pa.string()

# One row per evaluation per trial. flops/tokens/wall_s are cumulative training-only totals
# (FLOPs, tokens, seconds); eval and checkpoint seconds are kept apart (design.md, "Compute").
CURVE_FIELDS: list[pa.Field] = [
    pa.field(name, tp)
    for name, tp in [
        ("experiment", _str),
        ("trial_id", _str),
        ("step", _i64),  # optimizer steps done
        ("tokens", _i64),
        ("flops", _f64),
        ("wall_s", _f64),
        ("stage", pa.int32()),  # 0-based stage index
        ("unique_layers", pa.int32()),
        ("mean_depth", _f64),  # mean executed depth since the previous row
        ("lr", _f64),
        ("train_loss", _f64),
        ("eval_loss", _f64),  # full-depth held-out loss
        ("eval_wall_s", _f64),
        ("checkpoint_wall_s", _f64),
    ]
]

_TRIAL_HEAD = [("experiment", _str), ("trial_id", _str), ("role", _str), ("status", _str)]
_TRIAL_TAIL = [
    *[(n, _f64) for n in ("target_loss", "final_eval_loss", "objective")],
    *[(n, _f64) for n in ("flops_to_target", "tokens_to_target", "wall_s_to_target")],
    ("saving", _f64),
    ("speedup", _f64),
    ("total_flops", _f64),
    ("total_tokens", _i64),
    *[(n, _f64) for n in ("total_wall_s", "eval_wall_s", "checkpoint_wall_s", "trial_wall_s")],
    ("steps", _i64),
    ("error", _str),
    *[(n, _str) for n in ("progtune_version", "git_sha", "config_hash", "data_fingerprint")],
    ("device", _str),
    ("threads", _i64),
    ("precision", _str),  # what runtime.precision resolved to (bf16 | fp16 | fp32); added in 0.2
    ("workers", _i64),  # data-parallel ranks that trained the run; added with issue 12
    *[(f"{lib}_version", _str) for lib in ("python", "torch", "transformers", "ray", "optuna")],
    ("started_at", pa.timestamp("us", tz="UTC")),
]


def _knob_arrow_type(tp: Any) -> pa.DataType:
    """Python knob type from config.KNOB_TYPES -> Arrow type."""
    if typing.get_origin(tp) is tuple:
        return pa.list_(_knob_arrow_type(typing.get_args(tp)[0]))
    return {int: _i64, float: _f64, str: _str, bool: pa.bool_()}[tp]


_LIST_KNOBS = [k for k, tp in KNOB_TYPES.items() if typing.get_origin(tp) is tuple]


def curves_schema() -> pa.Schema:
    """Schema of curves.parquet (without the progtune metadata, which write_table adds)."""
    return pa.schema(CURVE_FIELDS)


def trials_schema() -> pa.Schema:
    """Schema of trials.parquet: identity, every knob (+ "<list knob>_str"), results, provenance."""
    knobs: list[tuple[str, pa.DataType]] = []
    for name, tp in KNOB_TYPES.items():
        knobs.append((name, _knob_arrow_type(tp)))
        if name in _LIST_KNOBS:
            knobs.append((f"{name}_str", _str))  # readable form, e.g. "1-3-6-12"
    return pa.schema([pa.field(n, t) for n, t in [*_TRIAL_HEAD, *knobs, *_TRIAL_TAIL]])


def _build(rows: list[Mapping], schema: pa.Schema) -> pa.Table:
    """Rows -> table in `schema`; missing keys are null, unknown keys are a caller bug."""
    unknown = {k for row in rows for k in row} - set(schema.names)
    if unknown:
        raise ValueError(f"unknown result columns {sorted(unknown)}; see results.py schemas")
    columns = []
    for field in schema:
        values = [row.get(field.name) for row in rows]
        if pa.types.is_integer(field.type):  # pyarrow would silently truncate 1.5 -> 1
            bad = [v for v in values if isinstance(v, float) and not v.is_integer()]
            if bad:
                raise ValueError(f"column {field.name!r} needs integers, got {bad[0]!r}")
        try:
            columns.append(pa.array(values, type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ValueError(f"column {field.name!r}: {exc}") from exc
    return pa.Table.from_arrays(columns, schema=schema)


def curves_table(rows: Iterable[Mapping]) -> pa.Table:
    """Curve rows (mappings keyed by CURVE_FIELDS names) -> a curves table."""
    return _build(list(rows), curves_schema())


def trials_table(rows: Iterable[Mapping]) -> pa.Table:
    """Trial rows -> a trials table; list knobs may be lists or tuples, "<knob>_str" is derived."""
    filled = []
    for row in rows:
        row = dict(row)
        for name in _LIST_KNOBS:
            if row.get(name) is not None and row.get(f"{name}_str") is None:
                row[f"{name}_str"] = list_text(tuple(row[name]))
        for key, allowed in (("role", ROLES), ("status", STATUSES)):
            if row.get(key) is not None and row[key] not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {row[key]!r}")
        filled.append(row)
    return _build(filled, trials_schema())


def _schema_for(kind: str) -> pa.Schema:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return trials_schema() if kind == "trials" else curves_schema()


def resolve_location(where: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """A local path or a pyarrow filesystem URI (s3://, gs://, file://) -> (filesystem, path)."""
    text = os.fspath(where)
    if "://" in text:
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), os.path.abspath(text)


def write_table(table: pa.Table, dest: str | os.PathLike, kind: str) -> None:
    """Write `table` atomically to `dest` with the schema version and kind in its metadata."""
    schema = _schema_for(kind)
    if table.schema.names != schema.names:
        raise ValueError(f"table columns do not match the {kind} schema; use {kind}_table")
    metadata = {SCHEMA_KEY: str(SCHEMA_VERSION).encode(), KIND_KEY: kind.encode()}
    table = table.cast(schema).replace_schema_metadata(metadata)
    shown = os.fspath(dest)
    try:
        fs, path = resolve_location(dest)
        if isinstance(fs, pafs.LocalFileSystem):
            write_atomic(Path(path), lambda f: pq.write_table(table, f))
        else:
            # Object stores: serialize first, then one PUT, which the store applies atomically.
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            buffer = sink.getvalue()
            if fs.type_name not in ("s3", "gcs"):  # object stores have no folders to make
                fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with fs.open_output_stream(path) as out:
                out.write(buffer)
    except (OSError, pa.ArrowException) as exc:
        raise ResultsError(
            f"cannot write results to {shown} ({exc}); check the path and its permissions"
        ) from exc


def _part_files(fs: pafs.FileSystem, path: str, shown: str) -> list[str]:
    """The file itself, or the folder's *.parquet files (skipping hidden "." and "_" names)."""
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [path]
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            return sorted(
                i.path
                for i in infos
                if i.type == pafs.FileType.File
                and i.path.endswith(".parquet")
                and not any(p[:1] in "._" for p in i.path[len(path) :].split("/") if p)
            )
    except (OSError, pa.ArrowException) as exc:
        raise ResultsError(f"cannot read results at {shown} ({exc}); check the path") from exc
    return []


def _read_part(fs: pafs.FileSystem, path: str, kind: str, in_folder: bool) -> pa.Table | None:
    """One Parquet file, checked for progtune metadata, version, kind (None: part gone since)."""
    try:
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            _check_metadata(parquet.schema_arrow.metadata or {}, path, kind)
            table = parquet.read()
    except (OSError, pa.ArrowException) as exc:
        if in_folder and isinstance(exc, FileNotFoundError):
            return None
        raise ResultsError(
            f"{path} is not a readable Parquet file ({exc}); delete it or rerun the search"
        ) from exc
    try:
        return _with_added_columns(table, _schema_for(kind)).cast(_schema_for(kind))
    except (ValueError, pa.ArrowException) as exc:
        raise ResultsError(
            f"{path} does not match the {kind} schema version {SCHEMA_VERSION} ({exc}); "
            "rewrite it with progtune"
        ) from exc


def _with_added_columns(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Files written before a column was added to schema version 1 read with it empty (null)."""
    missing = [f for f in schema if f.name in ADDED_COLUMNS and f.name not in table.column_names]
    for f in missing:
        table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(schema.names) if missing else table


def _check_metadata(metadata: Mapping[bytes, bytes], path: str, kind: str) -> None:
    if SCHEMA_KEY not in metadata:
        raise ResultsError(
            f"{path} is not a progtune results file (no {SCHEMA_KEY.decode()} metadata); "
            "pass a file written by progtune"
        )
    version = metadata[SCHEMA_KEY].decode(errors="replace")
    if version != str(SCHEMA_VERSION):
        raise ResultsError(
            f"{path} has results schema version {version}, this progtune reads version "
            f"{SCHEMA_VERSION}; upgrade progtune for newer files (or install the version "
            "that wrote it)"
        )
    found = metadata.get(KIND_KEY, b"").decode(errors="replace")
    if found != kind:
        raise ResultsError(
            f"{path} holds {found or 'unknown'} results, not {kind}; pass the {kind} file"
        )


def read_table(src: str | os.PathLike, kind: str) -> pa.Table:
    """Read a results file, or a folder of part files as one table, local or URI."""
    schema, shown = _schema_for(kind), os.fspath(src)
    try:
        fs, path = resolve_location(src)
    except (OSError, pa.ArrowException) as exc:
        raise ResultsError(f"cannot open results at {shown} ({exc}); check the URI") from exc
    files = _part_files(fs, path, shown)
    tables = [t for f in files if (t := _read_part(fs, f, kind, files != [path])) is not None]
    if not tables:
        raise ResultsError(
            f"no {kind} results at {shown}; run `progtune search` (or `progtune train`) first, "
            "or pass the experiment folder that holds them"
        )
    metadata = {SCHEMA_KEY: str(SCHEMA_VERSION).encode(), KIND_KEY: kind.encode()}
    return pa.concat_tables(tables).cast(schema.with_metadata(metadata))


def write_trials(rows: Iterable[Mapping], dest: str | os.PathLike) -> None:
    """trials_table + write_table."""
    write_table(trials_table(rows), dest, "trials")


def write_curves(rows: Iterable[Mapping], dest: str | os.PathLike) -> None:
    """curves_table + write_table."""
    write_table(curves_table(rows), dest, "curves")


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas, the one mapping for every reader: Int64 / Int32 / Float64 / boolean /
    string[pyarrow] (missing values and NaN read as <NA>), timestamps as datetime64[us, UTC], list
    knobs as tuples (or None), so config.from_flat(df.to_dict("records")[i]) rebuilds a config."""
    import pandas as pd  # lazy: the training loop must not need pandas

    mapping = {
        pa.int64(): pd.Int64Dtype(),
        pa.int32(): pd.Int32Dtype(),
        pa.float64(): pd.Float64Dtype(),
        pa.bool_(): pd.BooleanDtype(),
        pa.string(): pd.StringDtype("pyarrow"),
    }
    df = table.to_pandas(types_mapper=mapping.get)
    for field in table.schema:
        if pa.types.is_list(field.type):
            values = table.column(field.name).to_pylist()
            df[field.name] = pd.Series(
                [None if v is None else tuple(v) for v in values], index=df.index, dtype=object
            )
    return df


def read_trials(src: str | os.PathLike) -> pd.DataFrame:
    """trials.parquet -> DataFrame (dtypes: see _to_pandas)."""
    return _to_pandas(read_table(src, "trials"))


def read_curves(src: str | os.PathLike) -> pd.DataFrame:
    """curves.parquet (file or folder of parts) -> DataFrame (dtypes: see _to_pandas)."""
    return _to_pandas(read_table(src, "curves"))


def read_parquet_one_open(path: str | os.PathLike) -> pd.DataFrame:
    """Plain pandas, each file (a folder: each part) through one open: `pd.read_parquet(path)`
    opens a local path twice, so a rewrite in between can mix versions (parquet_reader_race.py)."""
    import pandas as pd  # lazy: the training loop must not need pandas

    if not os.path.isdir(path):
        with open(path, "rb") as f:
            return pd.read_parquet(f)
    frames = []
    for part in _part_files(pafs.LocalFileSystem(), os.path.abspath(path), os.fspath(path)):
        with contextlib.suppress(FileNotFoundError), open(part, "rb") as f:
            frames.append(pd.read_parquet(f))
    if not frames:
        raise FileNotFoundError(f"no Parquet parts in {os.fspath(path)}")
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------- compute to target
def _number(value: Any) -> float | None:
    """float64, or None for None / NaN / pd.NA / anything not a number."""
    try:
        out = float(value)
    except (TypeError, ValueError):  # None and pd.NA refuse float()
        return None
    return None if math.isnan(out) else out


def _crossing(curve: Any, target: float, x: str) -> tuple[Mapping, Mapping, float] | None:
    """(previous row, crossing row, fraction) at the first evaluation with eval_loss <= target."""
    rows = curve.to_dict("records") if hasattr(curve, "to_dict") else list(curve)
    points = [
        (xv, loss, row)
        for row in rows
        if (xv := _number(row.get(x))) is not None
        and (loss := _number(row.get("eval_loss"))) is not None
    ]
    points.sort(key=lambda p: p[0])  # stable: ties keep their given order
    previous: tuple[float, Mapping] | None = None  # last evaluation above the target
    for _, loss, row in points:
        if loss <= target:
            if previous is None or loss == target:
                return row, row, 1.0  # reached at this evaluation exactly
            l0, row0 = previous
            return row0, row, (l0 - target) / (l0 - loss)
        previous = (loss, row)
    return None


def _interpolate(first: Mapping, second: Mapping, fraction: float, column: str) -> float | None:
    x0, x1 = _number(first.get(column)), _number(second.get(column))
    if x0 is None or x1 is None:
        return None
    if fraction == 1.0:
        return x1  # exact, not x0 + (x1 - x0) with its rounding
    return x0 + fraction * (x1 - x0)


def flops_to_target(curve: Any, target: float, x: str = "flops") -> float | None:
    """Compute (column `x`, FLOPs by default) at which eval_loss first reaches <= target.

    Rows (mappings or a DataFrame) are taken in order of `x`, skipping rows whose eval_loss or
    `x` is missing/NaN; x is linearly interpolated between the last evaluation above the target
    and the first at or below it. The first evaluation already at/below -> its x; never -> None.
    """
    found = _crossing(curve, target, x)
    return None if found is None else _interpolate(*found, x)


def to_target(curve: Any, target: float) -> dict[str, float | None]:
    """FLOPs, tokens and wall seconds to target: the crossing found on flops, same fraction."""
    found = _crossing(curve, target, "flops")
    return {
        f"{c}_to_target": None if found is None else _interpolate(*found, c)
        for c in ("flops", "tokens", "wall_s")
    }


def saving(c_method: float | None, c_scratch: float | None) -> float | None:
    """Fraction of the from-scratch compute saved: 1 - c_method / c_scratch (None if undefined)."""
    m, s = _number(c_method), _number(c_scratch)
    return None if m is None or s is None or s == 0 else 1.0 - m / s


def speedup(c_method: float | None, c_scratch: float | None) -> float | None:
    """Relative speed-up over from scratch: c_scratch / c_method - 1 (None if undefined)."""
    m, s = _number(c_method), _number(c_scratch)
    return None if m is None or s is None or m == 0 else s / m - 1.0
