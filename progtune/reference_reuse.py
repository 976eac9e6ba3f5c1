"""Reuse a finished from-scratch reference run of another experiment in the same storage.

Training is bitwise deterministic for the same config, data, runtime and code, so a reference
run that matches on all of them (`ReferenceKey`) is the run this search would train: reusing it
saves a whole from-scratch run, and several searches then share one target. No Ray here: the
driver looks before Ray starts, in the Parquet files alone.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Any

from progtune import __version__
from progtune.config import config_hash, with_overrides
from progtune.errors import ProgtuneError, ResultsError
from progtune.results import read_trials
from progtune.search_state import plain_value


@dataclass(frozen=True)
class ReferenceKey:
    """Everything that changes a reference run's numbers; None = decided on the worker: any."""

    config_hash: str  # every knob but the runtime ones
    threads: int  # torch threads (float reductions differ with the thread count)
    device_type: str | None  # cpu | cuda
    precision: str | None  # what runtime.precision resolves to: bf16 | fp32
    data_fingerprint: str
    progtune_version: str
    workers: int = 1  # data-parallel processes (gloo/NCCL sums differ from one process's)
    compile: bool = False  # runtime.compile (compiled kernels round differently)

    def mismatch(self, row: dict[str, Any]) -> str | None:
        """The first field in which a trials.parquet row differs, as `name X != Y`; else None.
        A row without a worker count predates data parallelism: one process; without
        runtime.compile, eager."""
        recorded = {**row, "device_type": str(row.get("device") or "").split(":")[0] or None}
        recorded["workers"] = plain_value(row.get("workers")) or 1
        recorded["compile"] = bool(plain_value(row.get("runtime.compile")))
        for f in fields(self):
            want, got = getattr(self, f.name), plain_value(recorded.get(f.name))
            if want is not None and got != want:
                return f"{f.name} {got} != {want}"
        return None


def expected_key(settings: Any, data: Any) -> ReferenceKey:
    """The key of the reference run `settings` would train on `data` (`progtune search`)."""
    from progtune.search_state import reference_config

    threads = max(1, int(settings.cpus_per_trial))
    cfg = with_overrides(reference_config(settings.base), {"runtime.threads": threads})
    device = _device_type(settings.gpus_per_trial, settings.address)
    precision = None if cfg.runtime.precision == "auto" else cfg.runtime.precision
    if precision is None and device == "cpu":
        import torch

        from progtune.train import use_bf16

        precision = "bf16" if use_bf16(cfg, torch.device("cpu")) else "fp32"
    from progtune.search_settings import trial_layout

    workers = trial_layout(settings.workers_per_trial, settings.gpus_per_trial)[0]
    return ReferenceKey(
        config_hash(cfg), threads, device, precision, data.fingerprint, __version__,
        workers=workers, compile=cfg.runtime.compile,
    )  # fmt: skip


def _device_type(gpus_per_trial: float | None, address: str | None) -> str | None:
    """cpu or cuda when known before Ray starts; None when a cluster decides (`--address`)."""
    if gpus_per_trial is not None:
        return "cuda" if gpus_per_trial > 0 else "cpu"
    if address is not None:
        return None
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def find_reference(settings: Any, key: ReferenceKey) -> str | None:
    """The experiment URI holding a matching, completed reference run, newest first; None.

    `--reference NAME` (settings.reference) looks only there and raises ProgtuneError when it
    holds no matching run; otherwise every other experiment in `--storage` is looked at.
    """
    if settings.reference:
        uri = _experiment_uri(settings.storage, settings.reference)
        reasons: list[str] = []
        if _matching_run(uri, key, reasons) is None:
            why = reasons[0] if reasons else "no completed reference run there"
            raise ProgtuneError(
                f"--reference {settings.reference}: {why}; name another experiment or drop "
                "--reference to train a new reference run"
            )
        return uri
    found = []
    for uri in _experiments(settings.storage):
        if uri.rstrip("/") != settings.exp_uri.rstrip("/"):
            started = _matching_run(uri, key, [])
            if started is not None:
                found.append((started, uri))
    return max(found)[1] if found else None


def _matching_run(exp_uri: str, key: ReferenceKey, reasons: list[str]) -> Any:
    """The start time of the newest matching completed reference run in `exp_uri`, else None;
    why each candidate did not match goes to `reasons`."""
    try:
        trials = read_trials(f"{exp_uri}/trials.parquet")
    except ResultsError as exc:
        reasons.append(str(exc))
        return None
    best = None
    for row in trials[trials.role == "reference"].to_dict("records"):
        loss = row.get("final_eval_loss")
        if row["status"] != "completed" or not _finite(loss):
            reasons.append(f"its reference run is {row['status']}, not completed")
            continue
        why = key.mismatch(row)
        if why is not None:
            reasons.append(f"its reference run differs: {why}")
        elif best is None or row["started_at"] > best:
            best = row["started_at"]
    return best


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _experiment_uri(storage: str, name: str) -> str:
    """NAME in `storage`, or a folder / URI given whole."""
    if "://" in name or os.sep in name:
        return name.rstrip("/") if "://" in name else os.path.abspath(name)
    return f"{storage.rstrip('/')}/{name}"


def _experiments(storage: str) -> list[str]:
    """The folders directly in `storage` (a local folder or a pyarrow filesystem URI)."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(storage if "://" in storage else f"file://{storage}")
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except (OSError, ValueError):
        return []
    root = storage.rstrip("/")
    return sorted(
        f"{root}/{i.base_name}"
        for i in infos
        if i.type == pafs.FileType.Directory and not i.base_name.startswith(".")
    )
