"""trials.parquet's Arrow table kept between the driver's writes, rebuilt from what changed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from progtune.results import trials_table


class TrialsTableCache:
    """The last trials table written and the row objects it was built from.

    A row passed again as the same dict object is taken as unchanged: runs of unchanged rows are
    slices of the last table, each changed row a new one-row table, joined in Arrow. Converting
    every row from Python each write would cost O(trials x columns) in Python.
    """

    def __init__(self) -> None:
        self._table: pa.Table | None = None
        self._rows: list[Mapping[str, Any]] = []  # held, so their ids stay unique

    def table_for(self, rows: Sequence[Mapping[str, Any]]) -> pa.Table | None:
        """The trials table of `rows`, or None when they are the rows last written."""
        last = self._table
        if last is not None and len(rows) == len(self._rows):
            if all(a is b for a, b in zip(rows, self._rows, strict=True)):
                return None
        where = {id(row): i for i, row in enumerate(self._rows)} if last is not None else {}
        pieces: list[pa.Table] = []
        first, count = 0, 0  # a run of unchanged rows, consecutive in the last table
        for row in rows:
            pos = where.get(id(row))
            if pos is not None and count and pos == first + count:
                count += 1
                continue
            if count:
                pieces.append(last.slice(first, count))  # type: ignore[union-attr]
            first, count = (pos, 1) if pos is not None else (0, 0)
            if pos is None:
                pieces.append(trials_table([row]))
        if count:
            pieces.append(last.slice(first, count))  # type: ignore[union-attr]
        return pa.concat_tables(pieces).combine_chunks() if pieces else trials_table([])

    def written(self, rows: Sequence[Mapping[str, Any]], table: pa.Table) -> None:
        """Record what was written (after the write succeeded)."""
        self._table, self._rows = table, list(rows)
