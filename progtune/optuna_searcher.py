"""Optuna glue: the searcher that tells Optuna how each trial ended, and how it is made.

Tune pickles the searcher (its experiment checkpoint, read back by `--resume`) and the
define-by-run function; neither pickles the driver's live objects (the results state, the
space's user code): on resume the driver builds a fresh searcher, and Tune restores the saved
trial bookkeeping into it.
"""

from __future__ import annotations

import math
import pickle
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from progtune.config import Config
from progtune.search_state import SearchSettings, SearchState
from progtune.spaces import Space, call_define, enqueue_starts

# Bound to this driver's live objects: a restored state keeps the current ones. The results state
# and the gate are never pickled; the define function pickles without the space's user code.
_LIVE = ("search_state", "gate", "_space")
# What TPE counts towards its start-up trials (RUNNING too: constant_liar).
_STARTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class ProposalGate(Protocol):
    """The driver's side of a proposal: free slots, and news of the reference run."""

    def trial_capacity(self) -> int: ...

    def poll_reference(self) -> None: ...


class SpaceDefine:
    """The define-by-run function handed to OptunaSearch: the space's define, pinned knobs last."""

    def __init__(self, space: Space, base: Config, pinned: dict[str, Any]):
        self.space, self.base, self.pinned = space, base, pinned

    def __call__(self, trial: Any) -> dict:
        return call_define(self.space, trial, self.base, self.pinned)

    def __getstate__(self) -> dict:
        # A user's space file is not importable by name in another process: never pickled.
        return {**self.__dict__, "space": None}


class ProgtuneOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about how a trial ended.

    Tune calls on_trial_complete with the last result both for finished trials and for
    trials a scheduler stopped; only our trainable's final report carries final=True, so
    anything else is PRUNED (never COMPLETE with a partial value), errors are FAIL, and the
    value is computed by the driver from the whole curve (FLOPs to target or the surrogate).
    A trial finishing before the reference run set the target is told once it is known.

    Proposals see results: a trial is proposed only into a free slot (the gate's capacity), and
    once the start-up trials are used up, only when every finished trial has been told; until
    then `suggest` returns None and Tune asks again later.
    """

    def __init__(
        self,
        *args: Any,
        search_state: SearchState,
        gate: ProposalGate | None = None,
        startup_trials: int = 0,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.search_state, self.gate, self.startup_trials = search_state, gate, startup_trials
        self.pending: list[str] = []  # finished, waiting for the target to be told

    def suggest(self, trial_id: str) -> dict | None:
        return super().suggest(trial_id) if self._may_propose() else None

    def _may_propose(self) -> bool:
        if self.gate is not None:
            self.gate.poll_reference()  # Tune may wait in here for a trial, its loop not stepping
        if self.pending and self.search_state.target is not None:
            self.tell_pending()  # e.g. trials left pending by the run a --resume continues
        if self.gate is not None:
            told = self._completed_trials | set(self.pending)
            if sum(1 for t in self._ot_trials if t not in told) >= self.gate.trial_capacity():
                return False
        if not self.pending:
            return True
        started = self._ot_study.get_trials(deepcopy=False, states=_STARTED)
        return len(started) < self.startup_trials  # random draws need no results

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        return None  # progtune does not use Optuna's pruners: nothing to report mid-trial

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if error:
            self._tell(trial_id, None, TrialState.FAIL)
            return
        if not (result or {}).get("final"):
            self._report_curve(trial_id)
            self._tell(trial_id, None, TrialState.PRUNED)
            return
        value = self.search_state.objective_of(trial_id)
        if value is None:
            self.pending.append(trial_id)  # the target is not known yet
            return
        self._tell(trial_id, value, TrialState.COMPLETE)

    def tell_pending(self, give_up: bool = True) -> None:
        """Tell the trials that finished before the target was known: FAIL if it never will be
        (`give_up`); an interrupted search keeps them pending for the run --resume continues."""
        for trial_id in list(self.pending):
            value = self.search_state.objective_of(trial_id)
            if value is None and not give_up:
                continue
            if value is None:
                self._tell(trial_id, None, TrialState.FAIL)  # no target: nothing to rank
            else:
                self._tell(trial_id, value, TrialState.COMPLETE)
            self.pending.remove(trial_id)

    def _report_curve(self, trial_id: str) -> None:
        """A stopped trial's held-out losses as Optuna intermediate values (step = tokens)."""
        if trial_id not in self.search_state.trials:
            return
        ot_trial, seen = self._ot_trials[trial_id], set()
        for row in self.search_state.curve(trial_id):
            loss, tokens = row.get("eval_loss"), row.get("tokens")
            if isinstance(loss, float) and math.isfinite(loss) and tokens not in seen:
                seen.add(tokens)
                try:
                    ot_trial.report(loss, step=int(tokens))
                except Exception as exc:  # keep the search going
                    optuna.logging.get_logger("progtune").warning(f"report failed: {exc}")
                    return

    def _tell(self, trial_id: str, value: float | None, state: TrialState) -> None:
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

    def __getstate__(self) -> dict:
        return {**self.__dict__, "search_state": None, "gate": None}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            saved = pickle.load(f)
        self.__dict__.update({k: v for k, v in saved.items() if k not in _LIVE})


def make_searcher(
    settings: SearchSettings,
    state: SearchState,
    journal_path: str | None,
    gate: ProposalGate | None = None,
) -> ProgtuneOptunaSearch:
    """The seeded Optuna searcher (`--sampler`) over the settings' space; its study in the
    `--optuna-storage` database if given, else in `journal_path` if given, else in memory.

    `gate`: the driver's slots and reference run (None: propose whenever Tune asks).
    """
    storage: optuna.storages.BaseStorage | None = None
    if settings.optuna_storage:  # a database optuna-dashboard can follow; --resume loads it
        storage = optuna.storages.RDBStorage(settings.optuna_storage)
    elif journal_path:
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(journal_path)
        )
    startup = startup_count(settings.num_samples)
    sampler = make_sampler(settings.sampler, settings.search_seed, startup)
    searcher = ProgtuneOptunaSearch(
        space=SpaceDefine(settings.space, settings.base, settings.pinned),
        metric="objective",
        mode="min",
        sampler=sampler,
        storage=storage,
        study_name=settings.name,
        search_state=state,
        gate=gate,
        startup_trials=startup,
    )
    # The space's starting points come first (Ray's points_to_evaluate would queue them again
    # on a journal that already has them; skip_if_exists does not).
    enqueue_starts(searcher._ot_study, settings.space, settings.base, settings.pinned)
    return searcher


def startup_count(num_samples: int) -> int:
    """Random start-up trials (the space's starting points among them) before a model-based
    sampler proposes: half the trials, at least 2 and at most 10 (8 trials, the default -> 4)."""
    return max(2, min(10, num_samples // 2))


SAMPLERS = ("tpe", "random", "qmc", "gp")  # `--sampler` choices; tpe is the default


def make_sampler(name: str, seed: int, startup: int) -> optuna.samplers.BaseSampler:
    """A seeded Optuna sampler by its `--sampler` name; model-based ones start with `startup`
    random trials (the space's starting points count among them)."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":  # Sobol points: an even cover of the floats (categoricals drawn at random)
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":  # Optuna's GPSampler needs scipy (checked by the search CLI before Ray)
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    return optuna.samplers.TPESampler(
        seed=seed,
        multivariate=True,
        group=True,  # conditional spaces: sample the knobs of each branch together
        n_startup_trials=startup,
        constant_liar=True,  # concurrent trials do not all propose the same point
    )
