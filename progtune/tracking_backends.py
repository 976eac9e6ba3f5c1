"""The tracking backends behind `--log`: MLflow, TensorBoard and W&B, one run per trial each.

Each backend library is imported only when its backend is built (the optional extras).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from progtune.tracking import SUMMARY_KEYS, TrackedTrial, Tracker, knob_params

_MLFLOW_END = {"completed": "FINISHED", "stopped": "KILLED"}  # anything else: FAILED
_MLFLOW_BATCH = 100  # MLflow takes at most 100 parameters per log_batch call


def _final_numbers(trial: TrackedTrial) -> dict[str, float]:
    final = trial.final or {}
    return {k: float(final[k]) for k in SUMMARY_KEYS if isinstance(final.get(k), (int, float))}


class MlflowBackend:
    """MLflow runs in MLFLOW_TRACKING_URI, experiment MLFLOW_EXPERIMENT_NAME (else the
    progtune experiment's name)."""

    name = "mlflow"

    def __init__(self, experiment: str, folder: str | None, tensorboard_dir: str | None):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        exp_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment
        found = self.client.get_experiment_by_name(exp_name)
        self.experiment_id = (
            found.experiment_id if found else self.client.create_experiment(exp_name)
        )
        self.experiment = experiment
        self.runs: dict[str, str] = {}  # trial id -> MLflow run id

    def _run(self, trial: TrackedTrial) -> str:
        if trial.trial_id not in self.runs:
            from mlflow.entities import Param

            tags = {"role": trial.role, "status": "running", "progtune.experiment": self.experiment}
            run = self.client.create_run(self.experiment_id, run_name=trial.trial_id, tags=tags)
            params = [Param(k, str(v)) for k, v in knob_params(trial.flat).items()]
            for i in range(0, len(params), _MLFLOW_BATCH):
                self.client.log_batch(run.info.run_id, params=params[i : i + _MLFLOW_BATCH])
            self.runs[trial.trial_id] = run.info.run_id
        return self.runs[trial.trial_id]

    def log_row(self, trial: TrackedTrial, metrics: dict[str, float], tokens: int) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        batch = [Metric(k, v, now_ms, tokens) for k, v in metrics.items()]
        self.client.log_batch(self._run(trial), metrics=batch)

    def finish(self, trial: TrackedTrial, tokens: int) -> None:
        from mlflow.entities import Metric

        run_id = self._run(trial)
        now_ms = int(time.time() * 1000)
        finals = [Metric(k, v, now_ms, tokens) for k, v in _final_numbers(trial).items()]
        self.client.log_batch(run_id, metrics=finals)
        self.client.set_tag(run_id, "status", trial.status)
        self.client.set_terminated(run_id, _MLFLOW_END.get(trial.status, "FAILED"))
        del self.runs[trial.trial_id]

    def close(self) -> None:
        for run_id in self.runs.values():  # runs the search never finished (interrupted)
            self.client.set_terminated(run_id, "KILLED")
        self.runs.clear()


class TensorBoardBackend:
    """Event files in TENSORBOARD_DIR/TRIAL (default: the experiment folder's tensorboard/)."""

    name = "tensorboard"

    def __init__(self, experiment: str, folder: str | None, tensorboard_dir: str | None):
        default = os.path.join(folder, "tensorboard") if folder else f"tensorboard/{experiment}"
        self.root = Path(tensorboard_dir or default)
        self.writers: dict[str, Any] = {}

    def _writer(self, trial: TrackedTrial) -> Any:
        if trial.trial_id not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(self.root / trial.trial_id))
            table = "\n".join(f"| {k} | {v} |" for k, v in knob_params(trial.flat).items())
            writer.add_text("knobs", "| knob | value |\n|---|---|\n" + table)
            writer.add_text("role", trial.role)
            self.writers[trial.trial_id] = writer
        return self.writers[trial.trial_id]

    def log_row(self, trial: TrackedTrial, metrics: dict[str, float], tokens: int) -> None:
        writer = self._writer(trial)
        for key, value in metrics.items():
            writer.add_scalar(key, value, global_step=tokens)

    def finish(self, trial: TrackedTrial, tokens: int) -> None:
        from torch.utils.tensorboard.summary import hparams

        writer = self._writer(trial)
        finals = _final_numbers(trial)
        for key, value in finals.items():
            writer.add_scalar(key, value, global_step=tokens)
        writer.add_text("status", trial.status)
        # The HParams tab: the knobs beside the final numbers, in this trial's own run folder.
        knobs = {**knob_params(trial.flat), "role": trial.role, "status": trial.status}
        for summary in hparams(knobs, finals):
            writer.file_writer.add_summary(summary)
        writer.close()
        del self.writers[trial.trial_id]

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


class WandbBackend:
    """W&B runs in WANDB_PROJECT (else the experiment's name), grouped by experiment; WANDB_MODE
    (offline, disabled) as W&B reads it; run folders in WANDB_DIR, else the experiment folder."""

    name = "wandb"

    def __init__(self, experiment: str, folder: str | None, tensorboard_dir: str | None):
        import wandb

        self.wandb, self.experiment = wandb, experiment
        self.dir = os.environ.get("WANDB_DIR") or folder
        self.runs: dict[str, Any] = {}

    def _run(self, trial: TrackedTrial) -> Any:
        if trial.trial_id not in self.runs:
            if self.dir:
                Path(self.dir).mkdir(parents=True, exist_ok=True)
            self.runs[trial.trial_id] = self.wandb.init(
                project=os.environ.get("WANDB_PROJECT") or self.experiment,
                group=self.experiment,
                name=trial.trial_id,
                job_type=trial.role,
                tags=[trial.role],
                config=knob_params(trial.flat),
                dir=self.dir,
                reinit="create_new",  # trials run side by side: one live run each
                settings=self.wandb.Settings(quiet=True, console="off"),
            )
        return self.runs[trial.trial_id]

    def log_row(self, trial: TrackedTrial, metrics: dict[str, float], tokens: int) -> None:
        self._run(trial).log({**metrics, "tokens": tokens}, step=tokens)

    def finish(self, trial: TrackedTrial, tokens: int) -> None:
        run = self._run(trial)
        run.tags = (trial.role, trial.status)
        run.summary.update({**_final_numbers(trial), "status": trial.status})
        run.finish(exit_code=0 if trial.status == "completed" else 1)
        del self.runs[trial.trial_id]

    def close(self) -> None:
        for run in self.runs.values():
            run.finish(exit_code=1)
        self.runs.clear()


BACKENDS: dict[str, Any] = {
    "mlflow": MlflowBackend,
    "tensorboard": TensorBoardBackend,
    "wandb": WandbBackend,
}


def open_tracker(
    names: Sequence[str], experiment: str, folder: str | None, tensorboard_dir: str | None = None
) -> Tracker | None:
    """The tracker for these backends (None when none asked for; check_backends ran before).

    `experiment`: the experiment's name (MLflow experiment, W&B project and group unless their
    environment variables say otherwise); `folder`: the local experiment folder (TensorBoard's
    and W&B's default folders; None for object-store experiments); `tensorboard_dir`: --log-dir.
    """
    if not names:
        return None
    return Tracker([BACKENDS[n](experiment, folder, tensorboard_dir) for n in names])
