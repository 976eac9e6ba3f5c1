"""The search's from-scratch reference run, as it runs on a Ray worker (not part of the study).

It checkpoints like a trial, into the experiment's storage (`reference_store_uri`), so a retry
of its task after a lost process or node, and a resumed search, continue from its last
checkpoint instead of from step 0. With --workers-per-trial N > 1 it trains on N Ray Train
workers like the trials (`progtune.trial_workers.train_on_workers`); Train then keeps its
checkpoints itself, in a run folder inside that same store (`workers_run_name`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from progtune.config import Config, config_hash, from_flat, with_overrides
from progtune.experiment_storage import StoredCheckpoint, open_storage, read_text

REFERENCE_FOLDER = "reference_run"  # in the experiment folder: the reference's checkpoints


def reference_store_uri(exp_uri: str) -> str:
    """Where the reference run of experiment `exp_uri` keeps its latest checkpoint."""
    return f"{exp_uri.rstrip('/')}/{REFERENCE_FOLDER}"


@dataclass(frozen=True)
class ReferenceWorkers:
    """The data-parallel layout the reference trains on: the trials' (--workers-per-trial)."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


def workers_run_name(cfg: Config, workers: int) -> str:
    """Ray Train's run folder (in the reference store) of the reference on `workers` workers:
    named by config and world size, so a changed config or worker count never continues it."""
    return f"workers{workers}_{config_hash(cfg)}"


def reference_checkpoint(store_uri: str, cfg: Config, workers: int = 1) -> dict | None:
    """The meta ({"step", "curve"}) of the checkpoint a reference of `cfg` on `workers` workers
    would continue from, or None (none yet). One process: the store's marker; N workers: the
    latest progtune checkpoint in Train's run folder (Train keeps one, two while replacing it)."""
    if workers == 1:
        marker = StoredCheckpoint(store_uri).latest(config_hash(cfg))
        return None if marker is None else {"step": int(marker["step"]), "curve": None}
    import pyarrow.fs as pafs

    run_uri = f"{store_uri.rstrip('/')}/{workers_run_name(cfg, workers)}"
    fs, base = open_storage(run_uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(base))
    except (FileNotFoundError, OSError):
        return None
    best = None
    for info in infos:
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        text = read_text(f"{run_uri}/{info.base_name}/meta.json")
        try:
            meta = json.loads(text) if text else None
        except ValueError:  # an upload cut short
            meta = None
        if meta and (best is None or int(meta["step"]) > int(best["step"])):
            best = meta
    return best


def reference_task(
    flat: dict,
    data: Any,
    threads: int,
    board: Any,
    store_uri: str,
    layout: ReferenceWorkers | None = None,
) -> dict:
    """The reference run as a checkpointed, retried Ray task (it is not part of the Optuna study).

    It continues from the latest checkpoint in `store_uri` written by the same config, if any,
    and uploads every checkpoint it writes there. Its curve rows also go to the board as they
    come (with `resumed_from`, the step it continued from), so the live table and the Parquet
    files show its progress; the returned curve is the authoritative one. With `layout.workers`
    > 1 it trains on that many Ray Train workers (call it from a task that reserves no CPU).
    """
    cfg = with_overrides(from_flat(flat), {"runtime.threads": threads})
    if layout is not None and layout.workers > 1:
        return _reference_on_workers(cfg, data, board, store_uri, layout)
    return _reference_here(cfg, data, board, store_uri)


def _reference_on_workers(
    cfg: Config, data: Any, board: Any, store_uri: str, layout: ReferenceWorkers
) -> dict:
    """The reference on N Ray Train workers; Train's run folder in the store holds its
    checkpoints, and a later call (a retried task, a resumed search) continues from them."""
    from progtune.trial_workers import train_on_workers

    started = time.perf_counter()
    meta = reference_checkpoint(store_uri, cfg, layout.workers)
    resumed_from = int(meta["step"]) if meta else 0
    for row in (meta or {}).get("curve") or []:  # in case the driver never got them
        board.add_row.remote({**row, "resumed_from": resumed_from})

    def report(row: dict, checkpoint: Any) -> bool:  # rank 0, in a worker process
        board.add_row.remote({**row, "resumed_from": resumed_from})
        return False  # never stop the reference early

    result = train_on_workers(
        cfg,
        data,
        report,
        workers=layout.workers,
        cpus_per_worker=layout.cpus_per_worker,
        gpus_per_worker=layout.gpus_per_worker,
        run_name=workers_run_name(cfg, layout.workers),
        storage=_train_storage(store_uri),
    )
    totals = {k: v for k, v in result.items() if k not in ("curve", "status")}
    return {
        "curve": result["curve"],
        "final": {**totals, "trial_wall_s": time.perf_counter() - started},
        "status": result["status"],
        "resumed_from": resumed_from,
    }


def _train_storage(store_uri: str) -> str:
    """Ray Train's storage_path for the store: a URI as is, a local folder made absolute."""
    return store_uri if "://" in store_uri else open_storage(store_uri)[1]


def _reference_here(cfg: Config, data: Any, board: Any, store_uri: str) -> dict:
    """The reference in this process, its checkpoints uploaded to the store as they come."""
    from progtune.train import checkpoint_meta, train

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
