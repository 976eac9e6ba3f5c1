"""The driver's Tune callbacks: results into the search's state and Parquet, and the live table.

Both get the driver's `Search` by construction. Tune pickles callbacks with its experiment
state; the `Search` is never pickled (the driver hands fresh callbacks to a restored Tuner).
"""

from __future__ import annotations

import time
from typing import Any

from ray import tune

from progtune.search_driver import Search
from progtune.search_state import SearchState
from progtune.trial_trainable import CURVE_KEYS


class _SearchCallback(tune.Callback):
    """A callback bound to the driver's live `Search` (dropped when Tune pickles it)."""

    def __init__(self, search: Search):
        self.search: Search | None = search

    def __getstate__(self) -> dict:
        return {**self.__dict__, "search": None}

    @property
    def state(self) -> SearchState:
        assert self.search is not None, "a callback restored by Tune: the driver replaces it"
        return self.search.state


class ResultsCallback(_SearchCallback):
    """Feeds every result into the search's SearchState and writes Parquet."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        assert self.search is not None
        self.search.start_trial(trial.trial_id, trial.config)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        if trial.trial_id not in self.state.trials:
            self.on_trial_start(iteration, trials, trial)
        if result.get("final"):
            self.state.finish(trial.trial_id, result["status"], result)
        else:
            resumed_from = int(result.get("resumed_from") or 0)
            for earlier in result.get("restored_rows") or []:
                self.state.add_row(trial.trial_id, earlier, resumed_from)
            row = {k: result.get(k) for k in CURVE_KEYS}
            self.state.add_row(trial.trial_id, row, resumed_from)
        self.state.write()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rec = self.state.trials.get(trial.trial_id)
        if rec is not None and rec.status == "running":
            self.state.finish(trial.trial_id, "stopped", None)  # a scheduler stopped it
        self.state.write(force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id not in self.state.trials:
            self.on_trial_start(iteration, trials, trial)
        error = getattr(trial, "error_msg", None) or "trial failed (see Ray's error file)"
        self.state.finish(trial.trial_id, "failed", None, error=str(error).splitlines()[0])
        self.state.write(force=True)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        assert self.search is not None
        self.search.poll_reference()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.state.write(force=True)


class ProgressCallback(_SearchCallback):
    """A compact live table: trial, status, stage, progress, eval loss; best so far, ETA."""

    def __init__(self, search: Search, total: int, every_s: float = 20.0):
        super().__init__(search)
        self.total, self.every_s = total, every_s
        self._last = 0.0
        self._t0 = time.monotonic()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            print(progress_table(self.state, self.total, self._t0), flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        value = self.state.objective_of(trial.trial_id)
        shown = f"{value:.3e}" if value is not None else "pending target"
        print(f"trial {trial.trial_id} finished: objective {shown}", flush=True)


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
