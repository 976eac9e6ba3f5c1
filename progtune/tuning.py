"""Ray Tune x Optuna: the only module importing ray and optuna's search machinery.

One Tune trial = one complete `progtune.train.train` run. The driver prepares the data once and
ships it to every trial; a from-scratch reference run sets the target loss while the first trials
already train; a driver-side callback keeps the Parquet results; the Optuna study (TPE) is told
FLOPs-to-target, or a surrogate, and PRUNED for trials a scheduler stopped.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any

import optuna
import ray
from optuna.trial import TrialState
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from progtune.budget import planned_flops
from progtune.config import (
    KNOB_TYPES,
    Config,
    flatten,
    from_flat,
    with_overrides,
)
from progtune.search_state import SearchSettings, SearchState, reference_config
from progtune.spaces import call_define, enqueue_starts

_CURVE_KEYS = (
    "step", "tokens", "flops", "wall_s", "stage", "unique_layers", "mean_depth", "lr",
    "train_loss", "eval_loss", "eval_wall_s", "checkpoint_wall_s",
)  # fmt: skip
_SETUPS: dict[str, dict] = {}  # experiment URI -> the trial setup (base config, pins, points)
_SETTINGS: dict[str, SearchSettings] = {}  # experiment URI -> the search settings
_REFERENCE: dict[str, Any] = {}  # experiment URI -> pending reference ObjectRef
_SEARCHERS: dict[str, Any] = {}  # experiment URI -> the Optuna searcher
_LAST_POLL: dict[str, float] = {}  # experiment URI -> when the reference's rows were last read


_STATES: dict[str, SearchState] = {}  # experiment URI -> state, shared by callback and searcher


# ---------------------------------------------------------------------------- Ray
def start_ray(settings: SearchSettings, tmp_root: str | None) -> str:
    """Start a local Ray on 127.0.0.1 or join `--address`; returns a line saying which."""
    if settings.address is None:
        ctx = ray.init(
            address="local",
            num_cpus=settings.num_cpus or os.cpu_count() or 1,
            object_store_memory=200 * 1024 * 1024,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=tmp_root,
            log_to_driver=True,
            logging_level="WARNING",
        )
        ip = ctx.address_info["node_ip_address"]
        if ip != "127.0.0.1":  # refuse to run on a routable address
            ray.shutdown()
            raise RuntimeError(f"local Ray picked node address {ip}, expected 127.0.0.1")
        return f"local Ray on 127.0.0.1 ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
    ray.init(address=settings.address, log_to_driver=True, logging_level="WARNING")
    res = ray.cluster_resources()
    return (
        f"joined the Ray cluster at {settings.address} "
        f"({int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs now)"
    )


def cluster_can_have_gpus() -> bool:
    """GPUs now, or GPU worker types in the autoscaler's config (a `ray up` head node)."""
    if ray.cluster_resources().get("GPU", 0) > 0:
        return True
    bootstrap = os.path.expanduser("~/ray_bootstrap_config.yaml")
    if os.path.exists(bootstrap):
        import yaml

        with open(bootstrap) as f:
            types = (yaml.safe_load(f) or {}).get("available_node_types", {})
        return any(t.get("resources", {}).get("GPU", 0) > 0 for t in types.values())
    return False


# ---------------------------------------------------------------------------- trials
def _trial_config(config: dict, setup: dict) -> Config:
    overrides = {k: v for k, v in config.items() if k in KNOB_TYPES}
    if "point" in config:
        overrides.update(setup["points"][config["point"]])
    if "repeat_seed" in config:
        overrides["seed"] = config["repeat_seed"]
    overrides.update(setup["pinned"])
    overrides["runtime.threads"] = setup["threads"]
    if setup.get("eval_at_flops"):
        overrides["eval.at_flops"] = setup["eval_at_flops"]
    return with_overrides(from_flat(setup["base"]), overrides)


def _board_target(setup: dict) -> float | None:
    if setup.get("target_loss") is not None:
        return setup["target_loss"]
    try:
        return ray.get(setup["board"].get.remote(), timeout=10)
    except Exception:  # no board yet (or gone): the target is simply unknown
        return None


def run_trial(config: dict, data: Any = None, setup: dict | None = None) -> None:
    """The Tune trainable: one progressive training, reported row by row."""
    from progtune.train import checkpoint_meta, train

    assert setup is not None
    logging.getLogger("ray").setLevel(logging.WARNING)  # no line per checkpoint in the console
    started = time.perf_counter()
    cfg = _trial_config(config, setup)
    work = tempfile.mkdtemp(prefix="progtune-trial-")
    ckpt_dir = os.path.join(work, "checkpoint")
    resume_from, resumed_from, restored = None, 0, []
    previous = tune.get_checkpoint()
    if previous is not None:
        resume_from = previous.to_directory(os.path.join(work, "restored"))
        meta = checkpoint_meta(resume_from)
        resumed_from, restored = int(meta["step"]), meta["curve"]

    def report(row: dict, checkpoint: Any) -> bool:
        metrics = {**row, "objective": math.nan, "final": False, "resumed_from": resumed_from}
        if restored:  # the rows up to the checkpoint, in case the driver never wrote them
            metrics["restored_rows"] = restored.copy()
            restored.clear()
        if checkpoint is not None:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint)))
        else:
            tune.report(metrics)
        if setup["stop_at_target"] and row["eval_loss"] is not None and row["step"] > 0:
            target = _board_target(setup)
            return target is not None and row["eval_loss"] <= target
        return False

    try:
        result = train(cfg, report, data=data, checkpoint_dir=ckpt_dir, resume_from=resume_from)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    status = result.status
    if status == "stopped":  # only --stop-at-target stops from inside: the target was reached
        status = "completed"
    last = result.curve[-1]
    tune.report(
        {
            **last,
            "objective": math.nan,
            "final": True,
            "resumed_from": resumed_from,
            "status": status,
            **result.totals(),
            "trial_wall_s": time.perf_counter() - started,
        }
    )


def _reference_task(flat: dict, data: Any, threads: int, board: Any) -> dict:
    """The reference run as a plain Ray task (it is not part of the Optuna study).

    Its curve rows also go to the board as they come, so the live table and the Parquet files
    show its progress; the returned curve is the authoritative one.
    """
    from progtune.train import train

    cfg = with_overrides(from_flat(flat), {"runtime.threads": threads})
    started = time.perf_counter()

    def report(row: dict, checkpoint: Any) -> bool:
        board.add_row.remote(row)
        return False  # never stop the reference early

    result = train(cfg, report, data=data)
    return {
        "curve": result.curve,
        "final": {**result.totals(), "trial_wall_s": time.perf_counter() - started},
        "status": result.status,
    }


@ray.remote(num_cpus=0)
class TargetBoard:
    """Holds the target loss once known (for --stop-at-target) and the reference run's rows."""

    def __init__(self) -> None:
        self.target: float | None = None
        self.rows: list[dict] = []

    def set(self, target: float | None) -> None:
        self.target = target

    def get(self) -> float | None:
        return self.target

    def add_row(self, row: dict) -> None:
        self.rows.append(row)

    def take_rows(self) -> list[dict]:
        rows, self.rows = self.rows, []
        return rows


# ---------------------------------------------------------------------------- driver side
class ResultsCallback(tune.Callback):
    """Feeds every result into the experiment's SearchState and writes Parquet."""

    def __init__(self, exp_uri: str):
        self.exp_uri = exp_uri

    @property
    def state(self) -> SearchState:
        return _STATES[self.exp_uri]

    def on_trial_start(self, iteration, trials, trial, **info):
        cfg = _trial_config(trial.config, _SETUPS[self.exp_uri])
        now = dt.datetime.now(dt.UTC)
        role = _SETTINGS[self.exp_uri].role
        self.state.start(trial.trial_id, role, cfg, _planned(cfg, self.state), now)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.trial_id not in self.state.trials:
            self.on_trial_start(iteration, trials, trial)
        if result.get("final"):
            self.state.finish(trial.trial_id, result["status"], result)
        else:
            resumed_from = int(result.get("resumed_from") or 0)
            for earlier in result.get("restored_rows") or []:
                self.state.add_row(trial.trial_id, earlier, resumed_from)
            row = {k: result.get(k) for k in _CURVE_KEYS}
            self.state.add_row(trial.trial_id, row, resumed_from)
        self.state.write()

    def on_trial_complete(self, iteration, trials, trial, **info):
        rec = self.state.trials.get(trial.trial_id)
        if rec is not None and rec.status == "running":
            self.state.finish(trial.trial_id, "stopped", None)  # a scheduler stopped it
        self.state.write(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        if trial.trial_id not in self.state.trials:
            self.on_trial_start(iteration, trials, trial)
        error = getattr(trial, "error_msg", None) or "trial failed (see Ray's error file)"
        self.state.finish(trial.trial_id, "failed", None, error=str(error).splitlines()[0])
        self.state.write(force=True)

    def on_step_begin(self, iteration, trials, **info):
        _poll_reference(self.exp_uri)

    def on_experiment_end(self, trials, **info):
        self.state.write(force=True)


class ProgressCallback(tune.Callback):
    """A compact live table: trial, status, stage, progress, eval loss; best so far, ETA."""

    def __init__(self, exp_uri: str, total: int, every_s: float = 20.0):
        self.exp_uri, self.total, self.every_s = exp_uri, total, every_s
        self._last = 0.0
        self._t0 = time.monotonic()

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            print(progress_table(_STATES[self.exp_uri], self.total, self._t0), flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        state = _STATES[self.exp_uri]
        value = state.objective_of(trial.trial_id)
        shown = f"{value:.3e}" if value is not None else "pending target"
        print(f"trial {trial.trial_id} finished: objective {shown}", flush=True)


def _planned(cfg: Config, state: SearchState) -> float:
    return planned_flops(cfg, state.vocab_size)


def _poll_reference(exp_uri: str) -> None:
    """When the reference task is done: record it, publish the target, tell pending trials."""
    ref = _REFERENCE.get(exp_uri)
    if ref is None:
        return
    state = _STATES[exp_uri]
    done, _ = ray.wait([ref], timeout=0)
    if not done:
        if time.monotonic() - _LAST_POLL.get(exp_uri, 0.0) > 5.0:  # live rows, now and then
            _LAST_POLL[exp_uri] = time.monotonic()
            board = _SETUPS[exp_uri]["board"]
            try:
                rows = ray.get(board.take_rows.remote(), timeout=30)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                rows = []  # live rows are a convenience: the task returns the whole curve
            for row in rows:
                state.add_row("reference", row)
        return
    del _REFERENCE[exp_uri]
    try:
        out = ray.get(ref)
        for row in out["curve"]:
            state.add_row("reference", row)
        state.finish("reference", out["status"], out["final"])
    except Exception as exc:  # the reference failed: no target, trials still record curves
        state.finish("reference", "failed", None, error=str(exc).splitlines()[0][:500])
    state.write(force=True)
    _publish_target(exp_uri)


def _publish_target(exp_uri: str) -> None:
    _SETUPS[exp_uri]["board"].set.remote(_STATES[exp_uri].target)
    searcher = _SEARCHERS.get(exp_uri)
    if searcher is not None:
        searcher.tell_pending()


class ProgtuneOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about how a trial ended.

    Tune calls on_trial_complete with the last result both for finished trials and for
    trials a scheduler stopped; only our trainable's final report carries final=True, so
    anything else is PRUNED (never COMPLETE with a partial value), errors are FAIL, and the
    value is computed by the driver from the whole curve (FLOPs to target or the surrogate).
    A trial finishing before the reference run set the target is told once it is known.
    """

    def __init__(self, *args, exp_uri: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.exp_uri = exp_uri
        self.pending: list[str] = []

    def on_trial_result(self, trial_id, result):
        return None  # progtune does not use Optuna's pruners: nothing to report mid-trial

    def on_trial_complete(self, trial_id, result=None, error=False):
        _SEARCHERS[self.exp_uri] = self
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if error or not (result or {}).get("final"):
            state = TrialState.FAIL if error else TrialState.PRUNED
            self._tell(trial_id, None, state)
            return
        value = _STATES[self.exp_uri].objective_of(trial_id)
        if value is None:
            self.pending.append(trial_id)  # the target is not known yet
            return
        self._tell(trial_id, value, TrialState.COMPLETE)

    def tell_pending(self) -> None:
        for trial_id in list(self.pending):
            value = _STATES[self.exp_uri].objective_of(trial_id)
            if value is None:
                self._tell(trial_id, None, TrialState.FAIL)  # no target: nothing to rank
            else:
                self._tell(trial_id, value, TrialState.COMPLETE)
            self.pending.remove(trial_id)

    def _tell(self, trial_id, value, state) -> None:
        ok = value is None or math.isfinite(value)
        try:
            self._ot_study.tell(
                self._ot_trials[trial_id],
                value if ok and value is not None else None,
                state=state if ok else TrialState.FAIL,
            )
        except Exception as exc:  # keep the search going, like the base class
            optuna.logging.get_logger("progtune").warning(f"tell failed: {exc}")
        self._completed_trials.add(trial_id)


class _Define:
    """The define-by-run function handed to OptunaSearch (picklable: looks the space up)."""

    def __init__(self, exp_uri: str):
        self.exp_uri = exp_uri

    def __call__(self, trial: Any) -> dict:
        settings = _SETTINGS[self.exp_uri]
        return call_define(settings.space, trial, settings.base, settings.pinned)


def _make_searcher(settings: SearchSettings, journal_path: str | None) -> ProgtuneOptunaSearch:
    storage = None
    if journal_path:
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(journal_path)
        )
    startup = max(2, min(10, settings.num_samples // 2))
    sampler = optuna.samplers.TPESampler(
        seed=settings.search_seed,
        multivariate=True,
        group=True,  # conditional spaces: sample the knobs of each branch together
        n_startup_trials=startup,
        constant_liar=True,  # concurrent trials do not all propose the same point
    )
    searcher = ProgtuneOptunaSearch(
        space=_Define(settings.exp_uri),
        metric="objective",
        mode="min",
        sampler=sampler,
        storage=storage,
        study_name=settings.name,
        exp_uri=settings.exp_uri,
    )
    # The space's starting points come first (Ray's points_to_evaluate would queue them again
    # on a journal that already has them; skip_if_exists does not).
    enqueue_starts(searcher._ot_study, settings.space, settings.base, settings.pinned)
    return searcher


def progress_table(state: SearchState, total: int, t0: float) -> str:
    """The live view: one line per trial plus the best so far and an ETA."""
    lines = [f"{'trial':<18} {'status':<10} {'stage':>5} {'tokens':>12} {'eval':>7}  objective"]
    done_fraction = 0.0
    for rec in state.trials.values():
        curve = state.curve(rec.trial_id)
        last = curve[-1] if curve else {}
        budget = rec.flat.get("budget.tokens") or 1
        progress = 1.0 if rec.status != "running" else (last.get("tokens") or 0) / budget
        done_fraction += progress
        value = state.objective_of(rec.trial_id) if rec.status != "running" else None
        eval_loss = last.get("eval_loss")
        lines.append(
            f"{rec.trial_id:<18} {rec.status:<10} {last.get('stage', 0):>5} "
            f"{last.get('tokens', 0):>12,} "
            f"{(f'{eval_loss:.3f}' if eval_loss is not None else '-'):>7}  "
            f"{(f'{value:.3e}' if value is not None else '-')}"
        )
    finished = [
        (v, t) for t in state.trials.values()
        if t.role != "reference" and t.status != "running"
        and (v := state.objective_of(t.trial_id)) is not None
    ]  # fmt: skip
    best = min(finished, key=lambda x: x[0]) if finished else None
    elapsed = time.monotonic() - t0
    eta = elapsed * (total - done_fraction) / done_fraction if done_fraction > 0.05 else None
    target = state.target
    lines.append(
        f"target loss {f'{target:.4f}' if target is not None else 'pending (reference running)'}"
        f"; best so far {f'{best[0]:.3e} FLOPs ({best[1].trial_id})' if best else '-'}"
        f"; {done_fraction:.1f}/{total} runs done, elapsed {elapsed:.0f}s"
        f"{f', ETA {eta:.0f}s' if eta is not None else ''}"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- run
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
    exp_uri = settings.exp_uri
    local_exp = None if "://" in exp_uri else exp_uri
    state = SearchState(exp_uri, settings.name, data.vocab_size, settings.target_loss)
    if settings.resume or settings.role == "confirm":
        state.load()  # a confirm run adds its trials to the experiment's results
    _STATES[exp_uri] = state
    _SETTINGS[exp_uri] = settings

    gpus = settings.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if cluster_can_have_gpus() else 0.0
    threads = max(1, int(settings.cpus_per_trial))
    # On the driver's node (it lives as long as the driver), restarted if its process dies;
    # its handle travels to the trials and the reference task.
    board = TargetBoard.options(
        max_restarts=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False
        ),
    ).remote()
    setup = {
        "base": flatten(settings.base),
        "pinned": settings.pinned,
        "points": settings.points,
        "threads": threads,
        "stop_at_target": settings.stop_at_target,
        "target_loss": settings.target_loss,
        "board": board,
    }
    if settings.scheduler == "asha":  # evaluate where ASHA's rungs decide
        setup["eval_at_flops"] = _asha_rungs(reference_config(settings.base), data.vocab_size)
    _SETUPS[exp_uri] = setup

    # The reference run: reused when a finished one is on record, else started now as a task
    # beside the first trials (it holds one trial slot, so no slot idles).
    ref = state.reference
    if ref is None or ref.status != "completed":
        ref_cfg = reference_config(settings.base)
        state.trials.pop("reference", None)
        state.start("reference", "reference", ref_cfg, planned_flops(ref_cfg, data.vocab_size),
                    dt.datetime.now(dt.UTC))  # fmt: skip
        task = ray.remote(_reference_task).options(
            num_cpus=settings.cpus_per_trial, num_gpus=gpus, max_retries=2
        )
        _REFERENCE[exp_uri] = task.remote(flatten(ref_cfg), data, threads, board)
        print("reference run (from scratch, full depth) started beside the trials", flush=True)
    else:
        print(f"reusing the finished reference run: target loss {state.target:.4f}", flush=True)
        _publish_target(exp_uri)

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=data, setup=setup),
        {"cpu": settings.cpus_per_trial, "gpu": gpus},
    )
    exp_path = settings.tune_path
    if settings.resume and tune.Tuner.can_restore(exp_path):
        tuner = tune.Tuner.restore(
            exp_path, trainable=trainable, resume_errored=True, restart_errored=False
        )
    else:
        tuner = _new_tuner(settings, trainable, local_exp, exp_uri)
    results = tuner.fit()  # a first Ctrl-C makes Tune save its state and return

    unfinished = sum(1 for r in results if r.error is None and not (r.metrics or {}).get("done"))
    unfinished += max(0, _expected_trials(settings) - len(results))
    interrupted = bool(unfinished) and settings.time_budget_s is None
    if interrupted and exp_uri in _REFERENCE:
        ray.cancel(_REFERENCE.pop(exp_uri), force=True)  # rerun on --resume
        state.trials.pop("reference", None)
    # The reference may still be running when the last trial ends: wait for it.
    while exp_uri in _REFERENCE:
        time.sleep(1.0)
        _poll_reference(exp_uri)
    searcher = _SEARCHERS.get(exp_uri)
    if searcher is not None:
        searcher.tell_pending()
    state.write(force=True)
    if interrupted:
        return 130, state
    failed = results.num_errors or (state.reference and state.reference.status == "failed")
    return (1 if failed else 0), state


def _trial_name(trial: Any) -> str:
    """Short folder names: Tune's default packs every parameter into the path."""
    return f"trial_{trial.trial_id}"


def _asha_rungs(reference: Config, vocab_size: int) -> list[float]:
    """ASHA's milestones in cumulative FLOPs: 1/8, 1/4, 1/2 and all of a scratch budget."""
    full = planned_flops(reference, vocab_size)
    return [full / 8, full / 4, full / 2, full]


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


def _new_tuner(settings, trainable, local_exp, exp_uri):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    results_cb = ResultsCallback(exp_uri)
    progress = ProgressCallback(exp_uri, _expected_trials(settings) + 1)
    if settings.points:
        param_space = {
            "point": tune.grid_search(list(range(len(settings.points)))),
            "repeat_seed": tune.grid_search(_point_seeds(settings)),
        }
        search_alg, num_samples = None, 1
    else:
        journal = os.path.join(local_exp, "optuna.journal") if local_exp else None
        if local_exp:
            os.makedirs(local_exp, exist_ok=True)
        searcher = _make_searcher(settings, journal)
        _SEARCHERS[exp_uri] = searcher
        limit = settings.max_concurrent or max(1, settings.num_samples)
        search_alg = ConcurrencyLimiter(searcher, max_concurrent=limit)
        param_space, num_samples = {}, settings.num_samples
    scheduler = FIFOScheduler()
    if settings.scheduler == "asha":
        rungs = _asha_rungs(reference_config(settings.base), _STATES[exp_uri].vocab_size)
        scheduler = ASHAScheduler(
            time_attr="flops",
            metric="eval_loss",
            mode="min",
            max_t=2 * rungs[-1],  # above every budget: a trial that ran out is not "stopped"
            grace_period=rungs[0],
            reduction_factor=2,
        )
    storage, name = settings.storage, settings.name
    if settings.tune_subdir:
        storage, name = settings.exp_uri, settings.tune_subdir
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=settings.max_concurrent or None if settings.points else None,
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
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[results_cb, progress],
            verbose=0,
        ),
    )
