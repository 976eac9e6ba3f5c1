"""The search's from-scratch reference run, as it runs on a Ray worker (not part of the study)."""

from __future__ import annotations

import time
from typing import Any

from progtune.config import from_flat, with_overrides


def reference_task(flat: dict, data: Any, threads: int, board: Any) -> dict:
    """The reference run as a plain Ray task (it is not part of the Optuna study).

    Its curve rows also go to the board as they come, so the live table and the Parquet files
    show its progress; the returned curve is the authoritative one.
    """
    from progtune.train import train

    cfg = with_overrides(from_flat(flat), {"runtime.threads": threads})
    started = time.perf_counter()

    def report(row: dict, checkpoint: Any) -> bool:
        board.add_row.remote(row)
        return False  # never stop the reference early

    result = train(cfg, report, data=data)
    return {
        "curve": result.curve,
        "final": {**result.totals(), "trial_wall_s": time.perf_counter() - started},
        "status": result.status,
    }
