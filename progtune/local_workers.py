"""One run trained by N local processes (gloo on 127.0.0.1), without Ray: `progtune train
--workers-per-trial N` and the data-parallel tests.

    result = run_local_workers(cfg, 2, report=print_row)

Each worker is a spawned process running `progtune.train.train` as one rank of a process group;
rank 0's curve rows go to `report` in this process, whose answer (stop or not) goes back to
rank 0, which decides for all ranks. Rank 0's result is returned.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import tempfile
from pathlib import Path
from typing import Any

from progtune.config import Config, with_overrides
from progtune.data_parallel import check_split
from progtune.errors import ProgtuneError
from progtune.train import Report, TrainResult

_POLL_S = 0.5  # how often the parent checks that no worker died silently


def worker_threads(cfg: Config, workers: int) -> int:
    """Torch threads per worker: runtime.threads, else the machine's cores shared out."""
    return cfg.runtime.threads or max(1, (os.cpu_count() or 1) // workers)


def run_local_workers(
    cfg: Config,
    workers: int,
    *,
    report: Report | None = None,
    data: Any = None,
    checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
) -> TrainResult:
    """Train `cfg` on `workers` local processes splitting each global micro-batch; rank 0's result.

    Arguments as for `progtune.train.train`; every rank resumes from the same `resume_from`,
    only rank 0 writes checkpoints. A failing rank fails the call with its error line.
    """
    import torch.multiprocessing as mp

    if workers < 1:
        raise ProgtuneError(f"--workers-per-trial must be >= 1, got {workers}")
    check_split(cfg.budget.batch_size, workers)  # before any process starts
    if data is None:
        from progtune.data import prepare_data

        data = prepare_data(cfg.data)  # once here; workers re-open the cached shards
    cfg = with_overrides(cfg, {"runtime.threads": worker_threads(cfg, workers)})
    ctx = mp.get_context("spawn")
    rows, answers = ctx.Queue(), ctx.Queue()
    meeting = tempfile.mkdtemp(prefix="progtune-workers-")  # the ranks' FileStore
    rendezvous = os.path.join(meeting, "rendezvous")
    ckpt = str(checkpoint_dir) if checkpoint_dir else None
    resume = str(resume_from) if resume_from else None
    procs = [
        ctx.Process(
            target=_worker,
            args=(rank, workers, rendezvous, cfg, data, ckpt, resume, rows, answers),
            daemon=False,  # compile workers may start processes of their own
        )
        for rank in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        result = _serve(procs, rows, answers, report)
        for p in procs:
            p.join()
        return result
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        shutil.rmtree(meeting, ignore_errors=True)


def _serve(procs: list, rows: Any, answers: Any, report: Report | None) -> TrainResult:
    """Relay rank 0's rows to `report` until a rank sends its result or fails."""
    while True:
        try:
            kind, rank, payload = rows.get(timeout=_POLL_S)
        except queue.Empty:
            dead = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if not dead:
                continue
            try:  # a worker that failed sent its error line before it exited
                kind, rank, payload = rows.get(timeout=1.0)
            except queue.Empty:
                rank, code = dead[0]
                raise RuntimeError(f"training worker {rank} died (exit code {code})") from None
        if kind == "row":
            row, written = payload
            asked = report(row, Path(written) if written else None) if report else None
            answers.put(bool(asked))
        elif kind == "error":
            error_type, line = payload
            raise _error_of(error_type, f"training worker {rank}: {line}")
        else:
            return payload


def _error_of(error_type: str, line: str) -> Exception:
    """A worker's error as the same progtune error class where it is one (exit code 2)."""
    from progtune import errors

    cls = getattr(errors, error_type, None)
    if isinstance(cls, type) and issubclass(cls, ProgtuneError):
        return cls(line)
    return RuntimeError(line)


def _worker(
    rank: int,
    world: int,
    rendezvous: str,
    cfg: Config,
    data: Any,
    checkpoint_dir: str | None,
    resume_from: str | None,
    rows: Any,
    answers: Any,
) -> None:
    """One rank: join the process group, train, send rank 0's rows and result to the parent."""
    from progtune.data_parallel import process_group
    from progtune.errors import one_line_reason
    from progtune.train import train

    def relay(row: dict[str, Any], written: Path | None) -> bool:
        rows.put(("row", rank, (row, str(written) if written else None)))
        return answers.get()

    try:
        with process_group(rank, world, rendezvous):
            result = train(
                cfg,
                relay if rank == 0 else None,
                data=data,
                checkpoint_dir=checkpoint_dir,
                resume_from=resume_from,
            )
        if rank == 0:
            rows.put(("result", rank, result))
    except BaseException as exc:  # the parent turns this into its own error
        with contextlib.suppress(Exception):
            rows.put(("error", rank, (type(exc).__name__, one_line_reason(exc))))
        raise SystemExit(1) from None
