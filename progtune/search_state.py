"""Driver-side bookkeeping of a search: curves, trial rows, target, objective, Parquet writes.

No Ray here: the Tune callbacks (search_callbacks.py) and the searcher (optuna_searcher.py) feed
this object, and it can be rebuilt from the experiment's Parquet files after the driver died
(`--resume`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from progtune.config import Config, from_flat, scratch_overrides, with_overrides
from progtune.curve_parts import CurveParts
from progtune.results import flops_to_target, read_curves, read_trials, write_table
from progtune.summary import trial_row
from progtune.trials_table_cache import TrialsTableCache

SURROGATE_EXPONENT = 10.0


@dataclass
class SearchSettings:
    """Everything `progtune search` decided before Ray starts (validated by search_cli)."""

    space: Any  # progtune.spaces.Space
    base: Config  # preset + config file + pinned knobs
    pinned: dict[str, Any]
    name: str
    storage: str  # absolute local folder or URI
    num_samples: int = 8
    max_concurrent: int = 0  # 0 = as many as fit
    address: str | None = None
    resume: bool = False
    target_loss: float | None = None
    stop_at_target: bool = False
    time_budget_s: float | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None = 1 when the cluster has (or can add) GPUs
    workers_per_trial: int = 1  # data-parallel workers per trial (search_settings.trial_layout)
    scheduler: str = "none"  # none | asha | asha-after-growth (search_args.ASHA_SCHEDULERS)
    search_seed: int = 0
    sampler: str = "tpe"  # tpe | random | qmc | gp (optuna_searcher.make_sampler)
    optuna_storage: str | None = None  # --optuna-storage URL; None: the local journal file
    reference: str | None = None  # --reference: the experiment whose reference run to reuse
    reference_source: str | None = None  # the experiment URI whose matching reference is reused
    num_cpus: int | None = None  # local Ray only
    max_failures: int = 2
    verbose: bool = True
    points: list[dict[str, Any]] = field(default_factory=list)  # fixed-point spaces
    point_seeds: list[int] = field(default_factory=list)  # seeds per point (default seed, +1..)
    role: str = "search"  # search | confirm
    tune_subdir: str = ""  # confirm runs keep Tune's state in a sub-folder of the experiment
    log: tuple[str, ...] = ()  # --log: tracking backends (progtune.tracking)
    log_dir: str | None = None  # --log-dir: TensorBoard's folder

    @property
    def exp_uri(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def tune_path(self) -> str:
        """Where Ray Tune keeps this run's experiment state (restore reads it from here)."""
        return f"{self.exp_uri}/{self.tune_subdir}" if self.tune_subdir else self.exp_uri


def reference_config(base: Config) -> Config:
    """The from-scratch reference: the preset's values plus pinned knobs, at full depth."""
    return with_overrides(base, scratch_overrides(base.model.n_layers))


def objective(curve: list[Mapping], target: float, planned_flops: float, vocab_size: int) -> float:
    """The search objective: FLOPs to reach the target loss, or a continuous surrogate.

    Reached: `flops_to_target` (linear interpolation between evaluations). Not reached (or
    diverged): planned_flops x (best_loss / target) ** 10, where planned_flops is the larger of the
    trial's and the reference run's whole planned budget, and best_loss the trial's lowest finite
    held-out loss (ln V, the loss of a uniform guess, when it has none). A trial that just misses
    scores about a full scratch budget, i.e. above every trial that reached the target within it,
    and trials that miss by more score higher, so Optuna still learns which way is better.
    """
    reached = flops_to_target(curve, target)
    if reached is not None:
        return reached
    losses = [r["eval_loss"] for r in curve if _finite(r.get("eval_loss"))]
    best = min(losses) if losses else math.log(vocab_size)
    return planned_flops * max(best / target, 1.0) ** SURROGATE_EXPONENT


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@dataclass
class TrialRecord:
    trial_id: str
    role: str
    flat: dict[str, Any]  # the trial's full config, flattened
    planned_flops: float
    curve: dict[int, dict[str, Any]] = field(default_factory=dict)  # step -> row
    resumed_from: int = 0
    final: dict[str, Any] | None = None  # the trainable's final summary report
    status: str = "running"
    error: str | None = None
    started_at: Any = None
    t0: float | None = None  # driver's monotonic clock at the first start (slot time measured here)


class SearchState:
    """All results of one experiment, in memory, written atomically to Parquet."""

    def __init__(self, exp_uri: str, experiment: str, vocab_size: int, target_loss: float | None):
        self.exp_uri, self.experiment, self.vocab_size = exp_uri.rstrip("/"), experiment, vocab_size
        self.fixed_target = target_loss
        self.trials: dict[str, TrialRecord] = {}
        self.tracker: Any = None  # progtune.tracking.Tracker under --log: fed rows and ends
        self._last_write = 0.0
        self._dirty = False
        self._parts = CurveParts(self.curves_path)
        # What the last write stored, so the next one rewrites only what changed since: per trial
        # change counts (of its row: add_row, finish; of its curve: add_row), and the record and
        # curve count its part was written from (a record replaced in `trials` - a reused or
        # restarted reference - is a change too).
        self._changes: dict[str, int] = {}
        self._curve_changes: dict[str, int] = {}
        self._stored: dict[str, tuple[TrialRecord, int]] = {}
        self._rows: dict[str, tuple[TrialRecord, int, tuple, dict[str, Any]]] = {}
        self._trials_table = TrialsTableCache()

    # ------------------------------------------------------------------ paths
    @property
    def trials_path(self) -> str:
        return f"{self.exp_uri}/trials.parquet"

    @property
    def curves_path(self) -> str:
        return f"{self.exp_uri}/curves.parquet"

    # ------------------------------------------------------------------ target
    @property
    def reference(self) -> TrialRecord | None:
        ref = [t for t in self.trials.values() if t.role == "reference"]
        return ref[0] if ref else None

    @property
    def target(self) -> float | None:
        """--target-loss, else the final held-out loss of the completed reference run."""
        if self.fixed_target is not None:
            return self.fixed_target
        ref = self.reference
        if ref and ref.status == "completed" and ref.final:
            return ref.final.get("final_eval_loss")
        return None

    def reference_flops_to_target(self) -> float | None:
        ref, target = self.reference, self.target
        if ref is None or target is None or ref.status != "completed":
            return None
        return flops_to_target(self.curve(ref.trial_id), target)

    # ------------------------------------------------------------------ updates
    def start(self, trial_id: str, role: str, cfg: Config, planned_flops: float, now: Any) -> None:
        from progtune.config import flatten

        if trial_id not in self.trials:
            self.trials[trial_id] = TrialRecord(
                trial_id, role, flatten(cfg), planned_flops, started_at=now, t0=time.monotonic()
            )

    def add_row(self, trial_id: str, row: Mapping[str, Any], resumed_from: int = 0) -> None:
        """One curve row; after a retry from step s, rows beyond s are replaced, not duplicated."""
        rec = self.trials[trial_id]
        if resumed_from != rec.resumed_from:
            rec.curve = {s: r for s, r in rec.curve.items() if s <= resumed_from}
            rec.resumed_from = resumed_from
        rec.curve[int(row["step"])] = dict(row)
        self._changed(trial_id, curve=True)
        if self.tracker is not None:
            self.tracker.log_row(rec, row)

    def finish(self, trial_id: str, status: str, final: Mapping[str, Any] | None, error=None):
        rec = self.trials[trial_id]
        rec.status, rec.final, rec.error = status, dict(final or {}), error
        if rec.t0 is not None:  # the slot's whole time: start-up, training, evaluation, saving
            rec.final["trial_wall_s"] = time.monotonic() - rec.t0
        self._changed(trial_id, curve=False)
        if self.tracker is not None:
            self.tracker.finish(rec)

    def _changed(self, trial_id: str, curve: bool) -> None:
        """Count a change of the trial's row (and of its curve): the next write rewrites them."""
        self._changes[trial_id] = self._changes.get(trial_id, 0) + 1
        if curve:
            self._curve_changes[trial_id] = self._curve_changes.get(trial_id, 0) + 1
        self._dirty = True

    def curve(self, trial_id: str) -> list[dict[str, Any]]:
        return [self.trials[trial_id].curve[s] for s in sorted(self.trials[trial_id].curve)]

    def objective_of(self, trial_id: str) -> float | None:
        """The trial's objective once the target is known (None before)."""
        target, rec = self.target, self.trials[trial_id]
        if target is None:
            return None
        # Missing the target is never cheaper than training the reference run's whole budget.
        ref = self.reference
        planned = max(rec.planned_flops, ref.planned_flops if ref else 0.0)
        if rec.final and rec.status == "completed":
            planned = max(planned, float(rec.final.get("total_flops") or 0.0))
        return objective(self.curve(trial_id), target, planned, self.vocab_size)

    # ------------------------------------------------------------------ rows + Parquet
    def trial_rows(self) -> list[dict[str, Any]]:
        """One trials.parquet row per trial. Rows are cached: one is rebuilt only when its trial,
        the target or the reference run changed (rebuilding all costs O(all curve rows)), and a
        rebuilt row equal to the old one stays the same object (TrialsTableCache then skips it)."""
        target, ref_ftt, ref = self.target, self.reference_flops_to_target(), self.reference
        context = (target, ref_ftt, ref.planned_flops if ref else None)
        rows = []
        for tid, rec in self.trials.items():
            count = self._changes.get(tid, 0)
            cached = self._rows.get(tid)
            if cached is None or cached[0] is not rec or cached[1:3] != (count, context):
                row = self._trial_row(rec, target, ref_ftt)
                if cached is not None and cached[0] is rec and row == cached[3]:
                    row = cached[3]
                cached = (rec, count, context, row)
                self._rows[tid] = cached
            rows.append(cached[3])
        return rows

    def _trial_row(self, rec: TrialRecord, target: float | None, ref_ftt: float | None) -> dict:
        final = rec.final or {}
        result = SimpleNamespace(
            status=rec.status,
            final_eval_loss=final.get("final_eval_loss"),
            curve=self.curve(rec.trial_id),
            total_flops=final.get("total_flops"),
            total_tokens=final.get("total_tokens"),
            total_wall_s=final.get("total_wall_s"),
            eval_wall_s=final.get("eval_wall_s"),
            checkpoint_wall_s=final.get("checkpoint_wall_s"),
            steps=final.get("steps"),
            device=final.get("device"),
            threads=final.get("threads"),
            precision=final.get("precision"),
            workers=final.get("workers"),
            data_fingerprint=final.get("data_fingerprint"),
        )
        row = trial_row(
            from_flat(rec.flat),
            result,
            experiment=self.experiment,
            trial_id=rec.trial_id,
            role=rec.role,
            target_loss=target,
            reference_flops_to_target=ref_ftt,
            started_at=rec.started_at,
            trial_wall_s=final.get("trial_wall_s"),
            error=rec.error,
        )
        row["objective"] = self.objective_of(rec.trial_id) if rec.status != "running" else None
        return row

    def write(self, force: bool = False, min_interval_s: float = 5.0) -> None:
        """Write what changed since the last write, atomically (throttled unless forced).

        curves.parquet is a folder of one part file per trial (curve_parts.py): only the parts of
        trials with new rows or a new status are rewritten, so a write costs the rows of those
        trials, not every row stored so far. trials.parquet (one row per trial, hundreds at most:
        one file that plain readers open once) is rewritten whole, but only when one of its rows
        changed (a start, a finish, a target reached; a running trial's new row changes nothing
        there), from the last table plus the changed rows (trials_table_cache.py). Parts go
        first, so a reader that finds a trial in trials.parquet finds its curve; parts of trials
        the search dropped go last.
        """
        if not (self._dirty or force) or (
            not force and time.monotonic() - self._last_write < min_interval_s
        ):
            return
        whole = self._parts.layout() != "folder"  # first write, or an old single file to replace
        changed = {
            tid: (rec, self._curve_changes.get(tid, 0))
            for tid, rec in self.trials.items()
            if whole or not self._is_stored(tid, rec)
        }
        self._parts.write(
            {
                tid: [
                    {"experiment": self.experiment, "trial_id": tid, **row}
                    for row in self.curve(tid)
                ]
                for tid in changed
            }
        )
        self._stored.update(changed)
        rows = self.trial_rows()
        table = self._trials_table.table_for(rows)
        if table is not None:  # rewritten when a row changed (start, finish, target crossed)
            write_table(table, self.trials_path, "trials")
            self._trials_table.written(rows, table)
        self._parts.remove_except(self.trials)
        self._last_write, self._dirty = time.monotonic(), False

    def _is_stored(self, trial_id: str, rec: TrialRecord) -> bool:
        """The trial's part on the store holds this record's curve as it is now."""
        stored = self._stored.get(trial_id)
        return (
            stored is not None
            and stored[0] is rec
            and stored[1] == self._curve_changes.get(trial_id, 0)
        )

    def load(self) -> None:
        """Rebuild from the experiment's Parquet files (resume); missing files mean a new search."""
        from progtune.budget import planned_flops  # torch: only the search driver gets here
        from progtune.errors import ResultsError

        try:
            trials = read_trials(self.trials_path)
        except ResultsError:
            return
        try:  # a folder of parts, an older single file, or the file a crash left aside
            curve_rows = read_curves(self._parts.read_path()).to_dict("records")
        except ResultsError:  # an empty folder: no trial has rows yet
            curve_rows = []
        by_trial: dict[str, list[dict]] = {}
        for row in curve_rows:
            by_trial.setdefault(row["trial_id"], []).append(row)
        knob_cols = [c for c in trials.columns if "." in c and not c.endswith("_str")] + ["seed"]
        for row in trials.to_dict("records"):
            # Unfinished trials keep their rows too: Tune continues them from their last
            # checkpoint and re-reports only what comes after it (add_row drops the rest).
            flat = {k: plain_value(row[k]) for k in knob_cols if plain_value(row[k]) is not None}
            rec = TrialRecord(
                row["trial_id"],
                row["role"],
                flat,
                planned_flops(from_flat(flat), self.vocab_size),
                status=row["status"],
                error=plain_value(row["error"]),
                started_at=row["started_at"],
            )
            rec.final = None if row["status"] == "running" else _final_of(row)
            for c in by_trial.get(rec.trial_id, []):
                step = int(c["step"])
                rec.curve[step] = {
                    k: plain_value(v) for k, v in c.items() if k not in ("experiment", "trial_id")
                }
            self.trials[rec.trial_id] = rec
            if self._parts.has(rec.trial_id):  # its part holds this curve: no rewrite needed
                self._stored[rec.trial_id] = (rec, self._curve_changes.get(rec.trial_id, 0))


_FINAL_KEYS = (
    "final_eval_loss",
    "total_flops",
    "total_tokens",
    "total_wall_s",
    "eval_wall_s",
    "checkpoint_wall_s",
    "steps",
    "device",
    "threads",
    "precision",
    "workers",
    "data_fingerprint",
    "trial_wall_s",
)


def _final_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A finished trial's final summary, read back from its trials.parquet row."""
    return {k: plain_value(row[k]) for k in _FINAL_KEYS}


def plain_value(value: Any) -> Any:
    """pandas NA / numpy scalars -> plain Python (None for missing)."""
    try:
        import pandas as pd

        if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return None
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, tuple):
        return list(value)
    return value.item() if hasattr(value, "item") else value
