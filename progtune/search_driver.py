"""The state of one running search, owned by the driver: `Search`, and the reference run it holds.

The driver creates one `Search` and hands it to the Tune callbacks by construction; the
searcher gets only the results state. Trials never see it: they get `Search.setup`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import time
from typing import TYPE_CHECKING, Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from progtune.budget import asha_rungs, planned_flops
from progtune.config import Config, flatten
from progtune.experiment_storage import StoredCheckpoint
from progtune.ray_cluster import cluster_can_grow, trial_slots
from progtune.reference_run import (
    ReferenceWorkers,
    reference_checkpoint,
    reference_store_uri,
    reference_task,
)
from progtune.search_args import ASHA_SCHEDULERS
from progtune.search_state import SearchSettings, SearchState, reference_config
from progtune.trial_trainable import TargetBoard, TrialSetup, trial_config
from progtune.trial_workers import driver_resources

if TYPE_CHECKING:
    from progtune.optuna_searcher import ProgtuneOptunaSearch

_LIVE_ROWS_EVERY_S = 5.0  # how often the reference's live rows are read
# How often the known target is sent to the board again: a restarted board forgets it, and a
# tiny trial started meanwhile can pass the target within seconds (one cheap actor call).
_TARGET_EVERY_S = 1.0
_SLOTS_EVERY_S = 10.0  # how often the cluster's resources are read again (it may grow)


class Search:
    """Settings, trial setup, results state, searcher and the pending reference run."""

    def __init__(
        self, settings: SearchSettings, setup: TrialSetup, state: SearchState, gpus: float
    ):
        self.settings, self.setup, self.state = settings, setup, state
        self.gpus_per_trial = gpus
        self.searcher: ProgtuneOptunaSearch | None = None  # None for fixed-point spaces
        self.reference: Any = None  # the reference task's ObjectRef while it runs
        self._reference_resumed_from = 0  # the checkpoint step its live rows last came from
        self._last_poll = 0.0  # when the reference's live rows were last read
        self._slots, self._slots_read = 1, -math.inf  # cluster slots, and when last read

    def trial_config(self, tune_config: dict) -> Config:
        return trial_config(tune_config, self.setup)

    def start_trial(self, trial_id: str, tune_config: dict) -> None:
        """Record a trial the first time the driver hears of it."""
        cfg = self.trial_config(tune_config)
        planned = planned_flops(cfg, self.state.vocab_size)
        self.state.start(trial_id, self.settings.role, cfg, planned, dt.datetime.now(dt.UTC))

    def trial_capacity(self) -> int:
        """How many search trials may train at once now (the searcher proposes into free ones).

        `--max-concurrent` if given; else the trials the cluster's resources hold now, plus one
        while an autoscaling cluster can still grow (a pending trial makes it grow), less the
        slot the reference run holds while it runs; at least 1.
        """
        if self.settings.max_concurrent:
            return self.settings.max_concurrent
        if time.monotonic() - self._slots_read > _SLOTS_EVERY_S:
            self._slots = trial_slots(
                self.settings.cpus_per_trial, self.gpus_per_trial, self.settings.workers_per_trial
            )  # gpus_per_trial: the trial's GPUs in all (its N workers' together)
            self._slots += 1 if cluster_can_grow() else 0
            self._slots_read = time.monotonic()
        return max(1, self._slots - (1 if self.reference is not None else 0))

    # ------------------------------------------------------------------ reference run
    def start_or_reuse_reference(self, data: Any) -> None:
        """Reuse a finished reference on record, else start it as a task beside the trials.

        It holds one trial slot, so no slot idles while it runs. One on record unfinished (a
        resumed search) or failed continues from its last checkpoint, its curve so far kept.
        """
        ref = self.state.reference
        if ref is not None and ref.status == "completed":
            target = self.state.target
            print(f"reusing the finished reference run: target loss {target:.4f}", flush=True)
            self.publish_target()
            return
        if self.settings.reference_source and self._copy_reference(self.settings.reference_source):
            return
        self._start_reference(data)

    def _start_reference(self, data: Any) -> None:
        """The reference as a checkpointed task, retried up to `--max-failures` times (a lost
        process or node, or an error) like a trial; each try continues from its last checkpoint
        in the experiment's storage."""
        ref_cfg = reference_config(self.settings.base)
        ref = self.state.trials.get("reference")
        if ref is not None and ref.role == "reference":  # a new record object: rewritten
            self.state.trials["reference"] = dataclasses.replace(
                ref, status="running", error=None, final=None, t0=time.monotonic()
            )
        else:
            self.state.trials.pop("reference", None)
            planned = planned_flops(ref_cfg, self.state.vocab_size)
            self.state.start("reference", "reference", ref_cfg, planned, dt.datetime.now(dt.UTC))
        store_uri = reference_store_uri(self.settings.exp_uri)
        setup = self.setup
        stored = reference_checkpoint(store_uri, ref_cfg, setup.workers)
        self._reference_resumed_from = int(stored["step"]) if stored else 0
        layout = ReferenceWorkers(setup.workers, setup.cpus_per_worker, setup.gpus_per_worker)
        if setup.workers > 1:  # like a trial: the task drives N Ray Train workers, holds nothing
            options: dict[str, Any] = {"num_cpus": 0, "memory": driver_resources()["memory"]}
        else:
            options = {"num_cpus": self.settings.cpus_per_trial, "num_gpus": self.gpus_per_trial}
        task = ray.remote(reference_task).options(
            **options,
            max_retries=self.settings.max_failures,  # a killed worker or a lost node
            retry_exceptions=True,  # and an error, as Tune retries a trial
        )
        self.reference = task.remote(
            flatten(ref_cfg), data, setup.threads, setup.board, store_uri, layout
        )
        if stored:
            print(f"reference run continues from its checkpoint at step {stored['step']} "
                  "beside the trials", flush=True)  # fmt: skip
        else:
            print("reference run (from scratch, full depth) started beside the trials", flush=True)

    def _copy_reference(self, source: str) -> bool:
        """Take the matching reference run of experiment `source` (found by reference_reuse)."""
        other = SearchState(
            source, source.rstrip("/").rsplit("/", 1)[-1], self.state.vocab_size, None
        )
        other.load()
        ref = other.reference
        if ref is None or ref.status != "completed":
            return False  # gone since the driver looked: train one
        ref.t0 = None  # its slot time is in its final summary already
        self.state.trials["reference"] = dataclasses.replace(ref, trial_id="reference")
        self.state.write(force=True)
        print(
            f"reusing reference run from {source} (trial {ref.trial_id}): "
            f"target loss {self.state.target:.4f}, no new reference run",
            flush=True,
        )
        self.publish_target()
        return True

    def poll_reference(self) -> None:
        """When the reference task is done: record it, publish the target, tell pending trials."""
        if self.reference is None:
            self._keep_target_published()
            return
        done, _ = ray.wait([self.reference], timeout=0)
        if not done:
            if time.monotonic() - self._last_poll > _LIVE_ROWS_EVERY_S:
                self._last_poll = time.monotonic()
                self._take_live_rows()
            return
        ref, self.reference = self.reference, None
        try:
            out = ray.get(ref)
        except Exception as exc:  # failed for good: no target, trials still record curves
            error = _task_error_line(exc)
            self.state.finish("reference", "failed", None, error=error)
            # Said now; the search's last lines say what to do about it.
            print(f"reference run failed for good ({error})", flush=True)
        else:
            for row in out["curve"]:  # the whole curve: it replaces the live rows
                self.state.add_row("reference", row, out["resumed_from"])
            self.state.finish("reference", out["status"], out["final"])
            if out["resumed_from"]:
                print(f"reference run {out['status']} (continued from its checkpoint at step "
                      f"{out['resumed_from']})", flush=True)  # fmt: skip
        self.state.write(force=True)
        if self.state.reference is not None and self.state.reference.status != "failed":
            # Recorded for good: its checkpoint would only ever continue it (trials keep theirs
            # for `progtune export`).
            StoredCheckpoint(reference_store_uri(self.settings.exp_uri)).remove()
        self.publish_target()

    def _keep_target_published(self) -> None:
        """Set the known target on the board again now and then: Ray restarts a lost board
        actor with a fresh `__init__`, and trials asking it for --stop-at-target would
        otherwise never hear the target again."""
        target = self.state.target
        if not self.settings.stop_at_target or target is None:
            return
        if time.monotonic() - self._last_poll > _TARGET_EVERY_S:
            self._last_poll = time.monotonic()
            self.setup.board.set.remote(target)

    def _take_live_rows(self) -> None:
        try:
            rows = ray.get(self.setup.board.take_rows.remote(), timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            rows = []  # live rows are a convenience: the task returns the whole curve
        for row in rows:
            resumed_from = int(row.pop("resumed_from", 0) or 0)
            if resumed_from != self._reference_resumed_from and resumed_from > 0:
                print(f"reference run retried: continues from its checkpoint at step "
                      f"{resumed_from}", flush=True)  # fmt: skip
            self._reference_resumed_from = resumed_from
            self.state.add_row("reference", row, resumed_from)

    def publish_target(self) -> None:
        self.setup.board.set.remote(self.state.target)
        self.tell_pending()

    def tell_pending(self, give_up: bool = True) -> None:
        if self.searcher is not None:
            self.searcher.tell_pending(give_up)

    def wait_for_reference(self) -> None:
        """The reference may still be running when the last trial ends: wait for it."""
        while self.reference is not None:
            time.sleep(1.0)
            self.poll_reference()

    def cancel_reference(self) -> None:
        """Stop a running reference run (an interrupted search). It stays on record unfinished,
        with its curve so far: `--resume` continues it from its last stored checkpoint."""
        if self.reference is not None:
            ray.cancel(self.reference, force=True)  # Ray retries no cancelled task
            self.reference = None


def _task_error_line(exc: BaseException) -> str:
    """The first line of what the reference task raised (a task error carries the task's own
    exception as its cause; a lost worker or node is Ray's own error)."""
    cause = getattr(exc, "cause", None) or exc
    text = f"{type(cause).__name__}: {cause}".strip()
    return (text.splitlines() or ["the reference task failed"])[0][:500]


def open_search(settings: SearchSettings, vocab_size: int, threads: int, gpus: float) -> Search:
    """The results state (loaded on resume and for confirm runs), the board and trial setup."""
    state = SearchState(settings.exp_uri, settings.name, vocab_size, settings.target_loss)
    if settings.resume or settings.role == "confirm":
        state.load()  # a confirm run adds its trials to the experiment's results
    # On the driver's node (it lives as long as the driver), restarted if its process dies;
    # its handle travels to the trials and the reference task.
    board = TargetBoard.options(
        max_restarts=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False
        ),
    ).remote()
    eval_at_flops = None
    if settings.scheduler in ASHA_SCHEDULERS:  # evaluate where ASHA's rungs decide
        eval_at_flops = asha_rungs(reference_config(settings.base), vocab_size)
    setup = TrialSetup(
        base=flatten(settings.base),
        pinned=settings.pinned,
        points=settings.points,
        threads=threads,
        stop_at_target=settings.stop_at_target,
        target_loss=settings.target_loss,
        board=board,
        eval_at_flops=eval_at_flops,  # asha-after-growth: each trial's from its last stage
        rungs_after_growth=settings.scheduler == "asha-after-growth",
        vocab_size=vocab_size,
    )
    return Search(settings, setup, state, gpus)
