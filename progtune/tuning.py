"""Ray Tune x Optuna: assemble and run one search (`run_search` is the entry point).

One Tune trial = one complete `progtune.train.train` run (progtune.trial_trainable), in one
process or on N data-parallel Ray Train workers (progtune.trial_workers). The driver
prepares the data once and ships it to every trial as a path (TokenData pickles as its shard
folder: trials map the shards, no tokens go through the object store); a from-scratch reference
run sets the target loss while the first trials already train (progtune.search_driver); driver-side
callbacks keep the Parquet results (progtune.search_callbacks); the Optuna study (TPE) is told
FLOPs-to-target, or a surrogate, and PRUNED for trials a scheduler stopped
(progtune.optuna_searcher).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import threading
from typing import Any

import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter

from progtune.optuna_searcher import make_searcher
from progtune.ray_cluster import cluster_can_have_gpus, start_ray, trial_slots
from progtune.search_args import ASHA_SCHEDULERS
from progtune.search_callbacks import ProgressCallback, ResultsCallback
from progtune.search_driver import Search, asha_rungs, open_search
from progtune.search_settings import trial_layout
from progtune.search_state import SearchSettings, SearchState, reference_config
from progtune.tracking_backends import open_tracker
from progtune.trial_trainable import asha_time_attr, run_trial
from progtune.trial_workers import driver_resources, run_trial_on_workers


def run_search(
    settings: SearchSettings, data: Any, tmp_root: str | None
) -> tuple[int, SearchState]:
    """Start or resume the search; returns (exit code, state). Ray is shut down on return.

    `tmp_root`: the folder from `local_ray.prepare_local_ray_env` (local mode), removed at the end.
    """
    # Tune warns about trials that never started when it builds the result grid: not news here.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    try:
        print(start_ray(settings, tmp_root), flush=True)
        return _fit(settings, data)
    finally:
        ray.shutdown()
        if tmp_root:
            shutil.rmtree(tmp_root, ignore_errors=True)


def _fit(settings: SearchSettings, data: Any) -> tuple[int, SearchState]:
    workers, gpus_per_worker = trial_layout(settings.workers_per_trial, settings.gpus_per_trial)
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if cluster_can_have_gpus() else 0.0
    settings = dataclasses.replace(settings, workers_per_trial=workers)
    threads = max(1, int(settings.cpus_per_trial))
    search = open_search(settings, data.vocab_size, threads, gpus_per_worker * workers)
    search.setup = dataclasses.replace(
        search.setup,
        workers=workers,
        cpus_per_worker=settings.cpus_per_trial,
        gpus_per_worker=gpus_per_worker,
    )
    local_exp = None if "://" in settings.exp_uri else settings.exp_uri
    tracker = open_tracker(settings.log, settings.name, local_exp, settings.log_dir)
    search.state.tracker = tracker  # fed where the Parquet rows are (README: tracking)
    try:
        search.start_or_reuse_reference(data)
        own_handler = signal.getsignal(signal.SIGINT)
        results = _tuner(search, _trainable(search, data)).fit()  # Ctrl-C: Tune saves, returns
        signalled = _tune_caught_sigint(own_handler)
        _restore_sigint(own_handler)
        return _finish(search, results, signalled)
    finally:
        if tracker is not None:
            tracker.close()


def _trainable(search: Search, data: Any) -> Any:
    """The Tune trainable with its resources: one process holding the trial's CPUs and GPUs,
    or (workers > 1) a driver holding none, whose Ray Train workers hold them."""
    setup = search.setup
    if setup.workers == 1:
        resources = {"cpu": search.settings.cpus_per_trial, "gpu": search.gpus_per_trial}
        return tune.with_resources(
            tune.with_parameters(run_trial, data=data, setup=setup), resources
        )
    return tune.with_resources(
        tune.with_parameters(run_trial_on_workers, data=data, setup=setup), driver_resources()
    )


def _tune_caught_sigint(own_handler: Any) -> bool:
    """Whether Tune's fit() ended on a Ctrl-C. Ray 2.60 (tune.py, _setup_signal_catching), in
    the main thread unless TUNE_DISABLE_SIGINT_HANDLER: it installs its own SIGINT handler, and
    only that handler, on a signal, puts the previous one back. A Ctrl-C after the last trial
    has ended (Tune still stepping, the reference still training) leaves no unfinished trial."""
    installs = threading.current_thread() is threading.main_thread() and not int(
        os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0")
    )
    return installs and signal.getsignal(signal.SIGINT) is own_handler


def _restore_sigint(handler: Any) -> None:
    """Tune leaves its own SIGINT handler installed when it ends without a signal; it only
    logs. Put ours back, so a Ctrl-C while the reference still trains interrupts the search."""
    if threading.current_thread() is threading.main_thread() and handler is not None:
        signal.signal(signal.SIGINT, handler)


def _reference_waited_for(search: Search) -> bool:
    """Wait for a reference still training after the last trial; False on Ctrl-C."""
    try:
        search.wait_for_reference()
    except KeyboardInterrupt:
        return False
    return True


def _finish(search: Search, results: Any, signalled: bool = False) -> tuple[int, SearchState]:
    """After Tune returns: settle the reference run and the pending tells; the exit code.
    `signalled`: Tune's run ended on a Ctrl-C."""
    settings, state = search.settings, search.state
    unfinished = sum(1 for r in results if r.error is None and not _ended(r.metrics or {}))
    unfinished += max(0, _expected_trials(settings) - len(results))
    interrupted = signalled or (bool(unfinished) and settings.time_budget_s is None)
    if not interrupted:
        interrupted = not _reference_waited_for(search)
    if interrupted:
        search.cancel_reference()  # --resume continues it from its stored checkpoint
    search.tell_pending(give_up=not interrupted)  # interrupted: --resume tells them
    if not interrupted:  # --time-budget ended the trials still in flight
        for rec in state.trials.values():
            if rec.status == "running" and rec.role != "reference":
                state.finish(rec.trial_id, "stopped", None)
    state.write(force=True)
    if interrupted:
        return 130, state
    failed = results.num_errors or (state.reference and state.reference.status == "failed")
    return (1 if failed else 0), state


def _ended(metrics: dict) -> bool:
    """Whether a trial's last result says it ended: Tune's `done`, or our trainable's final
    report. A restored Tuner's trial that ended just before a Ctrl-C may carry its final report
    without `done` (Ray 2.60 saved it TERMINATED with done False): still ended, not unfinished."""
    return bool(metrics.get("done") or metrics.get("final"))


def _tuner(search: Search, trainable: Any) -> tune.Tuner:
    """A new Tuner, or the saved one on --resume, driven by this search's searcher and callbacks.

    Tune pickles the searcher and the callbacks with its experiment state, without the driver's
    live objects; a restored Tuner gets the fresh ones (Tuner.restore takes none, so they are
    set on its internal state), and Tune then restores the saved trial bookkeeping into the
    fresh searcher.
    """
    settings = search.settings
    search_alg = _search_alg(search)
    callbacks = [ResultsCallback(search), ProgressCallback(search, _expected_trials(settings) + 1)]
    if settings.resume and tune.Tuner.can_restore(settings.tune_path):
        tuner = tune.Tuner.restore(
            settings.tune_path, trainable=trainable, resume_errored=True, restart_errored=False
        )
        saved = tuner._local_tuner  # Ray 2.60: the restored TunerInternal
        saved.get_run_config().callbacks = callbacks
        if search_alg is not None:
            saved._tune_config.search_alg = search_alg
        return tuner
    vocab_size, gpus = search.state.vocab_size, search.gpus_per_trial
    return _new_tuner(settings, trainable, search_alg, callbacks, vocab_size, gpus)


def _search_alg(search: Search) -> ConcurrencyLimiter | None:
    """The Optuna searcher behind a concurrency limit (None for fixed-point spaces)."""
    settings = search.settings
    if settings.points:
        return None
    local_exp = None if "://" in settings.exp_uri else settings.exp_uri
    # The journal file is the study's local default; --optuna-storage puts it in a database.
    journal = os.path.join(local_exp, "optuna.journal") if local_exp else None
    journal = None if settings.optuna_storage else journal
    if local_exp:
        os.makedirs(local_exp, exist_ok=True)
    search.searcher = make_searcher(settings, search.state, journal, gate=search)
    # The searcher proposes only into free slots (Search.trial_capacity); this bound only sizes
    # how many proposed trials Tune may hold waiting for resources (Ray 2.60 takes it from here).
    limit = settings.max_concurrent or max(1, settings.num_samples)
    return ConcurrencyLimiter(search.searcher, max_concurrent=limit)


def _trial_name(trial: Any) -> str:
    """Short folder names: Tune's default packs every parameter into the path."""
    return f"trial_{trial.trial_id}"


def _point_seeds(settings: SearchSettings) -> list[int]:
    """Seeds each fixed point runs on: given (confirm), or seed, seed+1, ... (N / points runs)."""
    if settings.point_seeds:
        return list(settings.point_seeds)
    repeats = max(1, settings.num_samples // max(1, len(settings.points)))
    return [settings.base.seed + i for i in range(repeats)]


def _expected_trials(settings: SearchSettings) -> int:
    if settings.points:
        return len(settings.points) * len(_point_seeds(settings))
    return settings.num_samples


def _scheduler(settings: SearchSettings, vocab_size: int) -> Any:
    """FIFO, or ASHA with its rungs in FLOPs of a scratch budget: cumulative FLOPs (asha), or
    FLOPs after a trial's last growth (asha-after-growth: 0 before it, below the grace period,
    so no trial is compared while it trains a small model in its cheap early stages)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if settings.scheduler not in ASHA_SCHEDULERS:
        return FIFOScheduler()
    rungs = asha_rungs(reference_config(settings.base), vocab_size)
    after_growth = settings.scheduler == "asha-after-growth"
    return ASHAScheduler(
        time_attr=asha_time_attr(after_growth),  # a trial's last row carries none
        metric="eval_loss",
        mode="min",
        max_t=2 * rungs[-1],  # above every budget: a trial that ran out is not "stopped"
        grace_period=rungs[0],
        reduction_factor=2,
    )


def _max_concurrent_trials(settings: SearchSettings, gpus_per_trial: float) -> int | None:
    """Tune's own bound, for fixed-point spaces (the searcher bounds the others): --max-concurrent,
    else none - but a trial on workers holds no CPU itself, so Tune would start every point at
    once with their Train runs waiting for workers: as many as the workers fit now (Ray's
    advice for Train inside Tune)."""
    if not settings.points:
        return None
    if settings.max_concurrent or settings.workers_per_trial == 1:
        return settings.max_concurrent or None
    slots = trial_slots(settings.cpus_per_trial, gpus_per_trial, settings.workers_per_trial)
    return max(1, slots)


def _new_tuner(
    settings: SearchSettings,
    trainable: Any,
    search_alg: ConcurrencyLimiter | None,
    callbacks: list,
    vocab_size: int,
    gpus_per_trial: float,
) -> tune.Tuner:
    param_space: dict[str, Any] = {}
    num_samples = settings.num_samples
    if settings.points:
        param_space = {
            "point": tune.grid_search(list(range(len(settings.points)))),
            "repeat_seed": tune.grid_search(_point_seeds(settings)),
        }
        num_samples = 1
    storage, name = settings.storage, settings.name
    if settings.tune_subdir:
        storage, name = settings.exp_uri, settings.tune_subdir
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=_scheduler(settings, vocab_size),
            num_samples=num_samples,
            max_concurrent_trials=_max_concurrent_trials(settings, gpus_per_trial),
            time_budget_s=settings.time_budget_s,
            # A slot's next trial runs in the same worker process: torch, transformers and
            # progtune are imported once per slot, not once per trial (bench/search_overhead.py).
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            # Two, not one: Tune saves which checkpoint a trial resumes from only every few
            # seconds, but deletes an older checkpoint at once; after a driver crash the
            # saved state may name the previous one, which must still exist (--resume).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            verbose=0,
        ),
    )
