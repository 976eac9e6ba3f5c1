"""The driver's Tune callbacks: results into the search's state and Parquet, and the live table.

Both get the driver's `Search` by construction. Tune pickles callbacks with its experiment
state; the `Search` is never pickled (the driver hands fresh callbacks to a restored Tuner).
"""

from __future__ import annotations

import os
import sys
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
        self.state.finish(trial.trial_id, "failed", None, error=_error_line(trial))
        self.state.write(force=True)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        assert self.search is not None
        self.search.poll_reference()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.state.write(force=True)


class ProgressCallback(_SearchCallback):
    """A compact live table: trial, status, stage, progress, tokens/s, eval loss; trials waiting
    for resources and for how long; best so far, ETA.

    On a terminal the table redraws in place every `every_s` (default 2 s); piped, each table is
    printed below the last (default every 20 s), as a log reads best.
    """

    def __init__(
        self, search: Search, total: int, every_s: float | None = None, tty: bool | None = None
    ):
        super().__init__(search)
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.total = total
        self.every_s = every_s if every_s is not None else (2.0 if self.tty else 20.0)
        self._last = 0.0
        self._t0 = time.monotonic()
        self._waiting_since: dict[str, float] = {}  # Tune's PENDING trials: first seen (monotonic)
        self._drawn = 0  # lines of the table now on the terminal (tty only)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        pending = self.pending_trials(trials, now)
        if now - self._last >= self.every_s:
            self._last = now
            table = progress_table(self.state, self.total, self._t0, pending)
            self.show(table)

    def pending_trials(self, trials: list, now: float) -> list[tuple[str, float]]:
        """(trial id, seconds waited) of Tune's trials waiting for resources, longest first."""
        waiting = [t.trial_id for t in trials if getattr(t, "status", None) == "PENDING"]
        self._waiting_since = {t: self._waiting_since.get(t, now) for t in waiting}
        return [(t, now - since) for t, since in self._waiting_since.items()]

    def show(self, table: str) -> None:
        """Print the table: over the previous one on a terminal, below it when piped."""
        print(redraw(table, self._drawn) if self.tty else table, flush=True)
        self._drawn = table.count("\n") + 1 if self.tty else 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        value = self.state.objective_of(trial.trial_id)
        shown = f"{value:.3e}" if value is not None else "pending target"
        print(f"trial {trial.trial_id} finished: objective {shown}", flush=True)
        self._drawn = 0  # keep this line: the next table goes below it


def redraw(table: str, drawn: int) -> str:
    """`table` to print over the `drawn` lines printed last: ANSI cursor up to the first of them
    (CSI n F) and clear to the end of the screen (CSI J)."""
    return (f"\x1b[{drawn}F\x1b[J" if drawn else "") + table


def tokens_per_s(row: dict) -> float | None:
    """A trial's training speed so far: cumulative tokens / training wall seconds of a curve row."""
    tokens, wall_s = row.get("tokens"), row.get("wall_s")
    return tokens / wall_s if tokens and wall_s else None


def progress_table(
    state: SearchState, total: int, t0: float, pending: list[tuple[str, float]] | None = None
) -> str:
    """The live view: one line per trial (those `pending` for resources: id, seconds waited)
    plus the best so far and an ETA."""
    waited = dict(pending or [])
    lines = [
        f"{'trial':<18} {'status':<10} {'stage':>5} {'tokens':>12} {'tok/s':>9} {'eval':>7}"
        "  objective"
    ]
    done_fraction = 0.0
    for rec in state.trials.values():
        curve = state.curve(rec.trial_id)
        last = curve[-1] if curve else {}
        budget = rec.flat.get("budget.tokens") or 1
        progress = 1.0 if rec.status != "running" else (last.get("tokens") or 0) / budget
        done_fraction += progress
        lines.append(_trial_line(state, rec, last, waited.pop(rec.trial_id, None)))
    lines += [_pending_line(trial_id, s) for trial_id, s in sorted(waited.items(), key=_longest)]
    lines.append(_summary_line(state, total, t0, done_fraction, len(pending or [])))
    return "\n".join(lines)


def _longest(item: tuple[str, float]) -> float:
    return -item[1]


def _trial_line(state: SearchState, rec: Any, last: dict, waited_s: float | None) -> str:
    """A started trial; one Tune holds back for resources again (e.g. a restored one) says so."""
    value = state.objective_of(rec.trial_id) if rec.status != "running" else None
    eval_loss = last.get("eval_loss")
    speed = tokens_per_s(last) if rec.status == "running" and waited_s is None else None
    shown = f"{value:.3e}" if value is not None else "-"
    if waited_s is not None:
        shown = f"waiting {waited_s:.0f}s for resources"
    return (
        f"{rec.trial_id:<18} {'pending' if waited_s is not None else rec.status:<10} "
        f"{last.get('stage', 0):>5} {last.get('tokens', 0):>12,} "
        f"{(f'{speed:,.0f}' if speed is not None else '-'):>9} "
        f"{(f'{eval_loss:.3f}' if eval_loss is not None else '-'):>7}  {shown}"
    )


def _pending_line(trial_id: str, waited_s: float) -> str:
    """A trial Tune made but could not place yet: no node has its CPUs/GPUs free."""
    return (
        f"{trial_id:<18} {'pending':<10} {'-':>5} {'-':>12} {'-':>9} {'-':>7}  "
        f"waiting {waited_s:.0f}s for resources"
    )


def _summary_line(
    state: SearchState, total: int, t0: float, done_fraction: float, n_pending: int
) -> str:
    finished = [
        (v, t) for t in state.trials.values()
        if t.role != "reference" and t.status != "running"
        and (v := state.objective_of(t.trial_id)) is not None
    ]  # fmt: skip
    best = min(finished, key=lambda x: x[0]) if finished else None
    elapsed = time.monotonic() - t0
    eta = elapsed * (total - done_fraction) / done_fraction if done_fraction > 0.05 else None
    target = state.target
    return (
        f"target loss {f'{target:.4f}' if target is not None else 'pending (reference running)'}"
        f"; best so far {f'{best[0]:.3e} FLOPs ({best[1].trial_id})' if best else '-'}"
        f"; {done_fraction:.1f}/{total} runs done, elapsed {elapsed:.0f}s"
        f"{f', ETA {eta:.0f}s' if eta is not None else ''}"
        f"{f'; {n_pending} waiting for resources' if n_pending else ''}"
    )


def _error_line(trial: Any) -> str:
    """The first line of what the trial raised. Ray 2.60 keeps no message on the trial: it
    pickles the error into the trial's local folder (synced to storage later) and appends the
    traceback to a text file; read the first, else the text's last line, else say where."""
    exc = _pickled_error(trial)
    if exc is not None:
        cause = getattr(exc, "cause", None) or exc
        text = f"{type(cause).__name__}: {cause}".strip()
    else:
        text = _last_error_text_line(getattr(trial, "error_file", None))
    return (text.splitlines() or ["trial failed (see Ray's error file)"])[0][:500]


def _pickled_error(trial: Any) -> BaseException | None:
    from ray import cloudpickle

    try:
        path = trial.pickled_error_file
        if path and os.path.exists(path):
            with open(path, "rb") as f:
                return cloudpickle.load(f)
        return trial.get_pickled_error()
    except Exception:  # an unreadable error file must not stop the search
        return None


def _last_error_text_line(path: str | None) -> str:
    try:
        with open(path or "") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        lines = []
    return lines[-1] if lines else "trial failed (see Ray's error file)"
