"""Experiment tracking (`--log mlflow|tensorboard|wandb`): one tracked run per trial, driver-side.

Each trial (and the reference run, and a plain `progtune train`) is one run: every resolved knob
is a parameter by its dotted name, role and status are tags, and every curve row is logged as
metrics at step = cumulative training tokens (FLOPs are a metric). The search feeds this from
SearchState, the same place the Parquet results come from; Ray's own logger callbacks log Tune's
config (only the proposed knobs) at step = training iteration, and never see the reference run,
which is a Ray task, not a Tune trial (see the README).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from progtune.errors import ProgtuneError

# backend -> (module that must import, the pyproject extra that installs it)
BACKEND_EXTRAS: dict[str, tuple[str, str]] = {
    "mlflow": ("mlflow", "mlflow"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
}
# Curve columns logged as metrics (tokens is the step; unique_layers and stage say the stage).
METRIC_KEYS = (
    "flops",
    "train_loss",
    "eval_loss",
    "lr",
    "wall_s",
    "stage",
    "unique_layers",
    "mean_depth",
    "step",
)
# Final numbers put in each run's summary (W&B) or logged once at the last step.
SUMMARY_KEYS = ("final_eval_loss", "total_flops", "total_tokens", "total_wall_s")


class TrackedTrial(Protocol):
    """What the tracker reads of a trial (search_state.TrialRecord has these)."""

    trial_id: str
    role: str
    flat: dict[str, Any]
    status: str
    final: dict[str, Any] | None


@dataclass
class TrainRun:
    """A plain `progtune train` run, as the tracker sees it."""

    trial_id: str
    role: str
    flat: dict[str, Any]
    status: str = "running"
    final: dict[str, Any] | None = None


def check_backends(names: Sequence[str] | None) -> tuple[str, ...]:
    """The asked-for backends, each proven installed now (before anything starts)."""
    chosen = tuple(dict.fromkeys(names or ()))
    for name in chosen:
        module, extra = BACKEND_EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise ProgtuneError(
                f"--log {name} needs the {extra} extra: pip install 'progtune[{extra}]'"
            )
    return chosen


def knob_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Every knob by its dotted name; lists as their readable text ("1-3-6-12"), None as "-"."""
    from progtune.config import list_text

    out: dict[str, Any] = {}
    for key, value in sorted(flat.items()):
        if isinstance(value, (list, tuple)):
            value = list_text(tuple(value)) or "-"
        out[key] = "-" if value is None else value
    return out


def row_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric metrics of one curve row (missing values left out)."""
    return {k: float(row[k]) for k in METRIC_KEYS if isinstance(row.get(k), (int, float))}


@dataclass
class Tracker:
    """Fans each trial's rows out to the chosen backends' runs; a failing backend is dropped
    with one warning, so tracking never stops a search."""

    backends: list[Any]
    last_step: dict[str, int] = field(default_factory=dict)  # trial -> last logged tokens
    ended: set[str] = field(default_factory=set)  # trials whose runs are closed

    def log_row(self, trial: TrackedTrial, row: Mapping[str, Any]) -> None:
        """One curve row; rows a retried trial reports again (tokens not past the last logged
        row) are skipped, so each evaluation is one point."""
        tokens = int(row.get("tokens") or 0)
        if trial.trial_id in self.ended or tokens <= self.last_step.get(trial.trial_id, -1):
            return
        self.last_step[trial.trial_id] = tokens
        metrics = row_metrics(row)
        self._each("log_row", trial, metrics, tokens)

    def finish(self, trial: TrackedTrial) -> None:
        """Close the trial's run with its status and final numbers (once)."""
        if trial.trial_id not in self.ended:
            self.ended.add(trial.trial_id)
            self._each("finish", trial, self.last_step.get(trial.trial_id, 0))

    def close(self) -> None:
        self._each("close")

    def _each(self, method: str, *args: Any) -> None:
        for backend in list(self.backends):
            try:
                getattr(backend, method)(*args)
            except Exception as exc:
                self.backends.remove(backend)
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                print(
                    f"progtune: warning: --log {backend.name} stopped ({first})",
                    file=sys.stderr,
                    flush=True,
                )


def add_log_flags(p: Any) -> None:
    """`--log` (repeatable) and `--log-dir`, the same for `train` and `search`."""
    p.add_argument(
        "--log",
        action="append",
        choices=list(BACKEND_EXTRAS),
        default=None,
        metavar="BACKEND",
        help="track each run in mlflow, tensorboard or wandb (repeatable; needs the extra of "
        "that name, e.g. pip install 'progtune[mlflow]')",
    )
    p.add_argument(
        "--log-dir",
        default=None,
        metavar="DIR",
        help="TensorBoard's log folder, one sub-folder per run (default: the experiment "
        "folder's tensorboard/)",
    )
