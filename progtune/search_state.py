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
from progtune.results import flops_to_target, read_curves, read_trials, write_curves, write_trials
from progtune.summary import trial_row

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
    scheduler: str = "none"  # none | asha
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
        self._dirty = True
        if self.tracker is not None:
            self.tracker.log_row(rec, row)

    def finish(self, trial_id: str, status: str, final: Mapping[str, Any] | None, error=None):
        rec = self.trials[trial_id]
        rec.status, rec.final, rec.error = status, dict(final or {}), error
        if rec.t0 is not None:  # the slot's whole time: start-up, training, evaluation, saving
            rec.final["trial_wall_s"] = time.monotonic() - rec.t0
        self._dirty = True
        if self.tracker is not None:
            self.tracker.finish(rec)

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
        target, ref_ftt = self.target, self.reference_flops_to_target()
        rows = []
        for rec in self.trials.values():
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
            rows.append(row)
        return rows

    def write(self, force: bool = False, min_interval_s: float = 5.0) -> None:
        """Rewrite both files atomically (throttled unless forced)."""
        if not (self._dirty or force) or (
            not force and time.monotonic() - self._last_write < min_interval_s
        ):
            return
        curves = [
            {"experiment": self.experiment, "trial_id": tid, **row}
            for tid in self.trials
            for row in self.curve(tid)
        ]
        write_curves(curves, self.curves_path)
        write_trials(self.trial_rows(), self.trials_path)
        self._last_write, self._dirty = time.monotonic(), False

    def load(self) -> None:
        """Rebuild from the experiment's Parquet files (resume); missing files mean a new search."""
        from progtune.budget import planned_flops  # torch: only the search driver gets here
        from progtune.errors import ResultsError

        try:
            trials = read_trials(self.trials_path)
        except ResultsError:
            return
        curves = read_curves(self.curves_path)
        by_trial: dict[str, list[dict]] = {}
        for row in curves.to_dict("records"):
            by_trial.setdefault(row["trial_id"], []).append(row)
        knob_cols = [c for c in trials.columns if "." in c and not c.endswith("_str")] + ["seed"]
        for row in trials.to_dict("records"):
            # Unfinished trials keep their rows too: Tune continues them from their last
            # checkpoint and re-reports only what comes after it (add_row drops the rest).
            flat = {k: _plain(row[k]) for k in knob_cols if _plain(row[k]) is not None}
            rec = TrialRecord(
                row["trial_id"],
                row["role"],
                flat,
                planned_flops(from_flat(flat), self.vocab_size),
                status=row["status"],
                error=_plain(row["error"]),
                started_at=row["started_at"],
            )
            rec.final = (
                None
                if row["status"] == "running"
                else {
                    k: _plain(row[k])
                    for k in (
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
                        "data_fingerprint",
                        "trial_wall_s",
                    )
                }
            )
            for c in by_trial.get(rec.trial_id, []):
                step = int(c["step"])
                rec.curve[step] = {
                    k: _plain(v) for k, v in c.items() if k not in ("experiment", "trial_id")
                }
            self.trials[rec.trial_id] = rec


def _plain(value: Any) -> Any:
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
