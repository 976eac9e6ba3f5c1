"""The search's from-scratch reference run, as it runs on a Ray worker (not part of the study).

It checkpoints like a trial, into the experiment's storage (`reference_store_uri`), so a retry
of its task after a lost process or node, and a resumed search, continue from its last
checkpoint instead of from step 0.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from progtune.config import config_hash, from_flat, with_overrides
from progtune.experiment_storage import StoredCheckpoint

REFERENCE_FOLDER = "reference_run"  # in the experiment folder: the reference's checkpoints


def reference_store_uri(exp_uri: str) -> str:
    """Where the reference run of experiment `exp_uri` keeps its latest checkpoint."""
    return f"{exp_uri.rstrip('/')}/{REFERENCE_FOLDER}"


def reference_task(flat: dict, data: Any, threads: int, board: Any, store_uri: str) -> dict:
    """The reference run as a checkpointed, retried Ray task (it is not part of the Optuna study).

    It continues from the latest checkpoint in `store_uri` written by the same config, if any,
    and uploads every checkpoint it writes there. Its curve rows also go to the board as they
    come (with `resumed_from`, the step it continued from), so the live table and the Parquet
    files show its progress; the returned curve is the authoritative one.
    """
    from progtune.train import checkpoint_meta, train

    cfg = with_overrides(from_flat(flat), {"runtime.threads": threads})
    store, key = StoredCheckpoint(store_uri), config_hash(cfg)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="progtune-reference-"))
    try:
        resume_from = store.download(key, work / "restored")
        resumed_from = 0
        if resume_from is not None:
            meta = checkpoint_meta(resume_from)
            resumed_from = int(meta["step"])
            for row in meta["curve"]:  # in case the driver never got them
                board.add_row.remote({**row, "resumed_from": resumed_from})

        def report(row: dict, checkpoint: Any) -> bool:
            if checkpoint is not None:
                store.upload(Path(checkpoint), int(row["step"]), key)
            board.add_row.remote({**row, "resumed_from": resumed_from})
            return False  # never stop the reference early

        result = train(
            cfg, report, data=data, checkpoint_dir=work / "checkpoint", resume_from=resume_from
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "curve": result.curve,
        "final": {**result.totals(), "trial_wall_s": time.perf_counter() - started},
        "status": result.status,
        "resumed_from": resumed_from,
    }


def failed_for_good_line(error: str | None, target_loss: float | None) -> str:
    """What a search whose reference run failed for good tells the user, in one line."""
    why = f"reference run failed for good ({error or 'no error recorded'})"
    if target_loss is not None:
        return f"{why}: trials are scored against --target-loss {target_loss:g}"
    return (
        f"{why}: no target loss; rerun with --resume --target-loss X (e.g. the final loss of "
        "a finished run) to score the trials, or --resume alone to try it again from its last "
        "checkpoint"
    )
