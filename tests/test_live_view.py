"""The search's live table (issue 14 part 7): trials waiting for resources and for how long,
tokens/s of running trials, and redrawing in place on a terminal (plain lines when piped)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from progtune.search_callbacks import ProgressCallback, progress_table, redraw, tokens_per_s


class _State:
    """A stand-in SearchState: the trials, their curves and objectives the table reads."""

    def __init__(self) -> None:
        self.target = 3.5
        self.trials = {
            "ref": SimpleNamespace(
                trial_id="ref", role="reference", status="completed", flat={"budget.tokens": 100}
            ),
            "a": SimpleNamespace(
                trial_id="a", role="search", status="running", flat={"budget.tokens": 4000}
            ),
            "b": SimpleNamespace(
                trial_id="b", role="search", status="completed", flat={"budget.tokens": 100}
            ),
        }
        self._curves = {
            "ref": [{"tokens": 100, "wall_s": 1.0, "stage": 0, "eval_loss": 3.5}],
            "a": [
                {"tokens": 1000, "wall_s": 4.0, "stage": 0, "eval_loss": 5.0},
                {"tokens": 2000, "wall_s": 8.0, "stage": 1, "eval_loss": 4.0},
            ],
            "b": [{"tokens": 100, "wall_s": 2.0, "stage": 1, "eval_loss": 3.4}],
        }
        self._objectives = {"ref": 1e9, "b": 2e9}

    def curve(self, trial_id: str) -> list[dict]:
        return self._curves.get(trial_id, [])

    def objective_of(self, trial_id: str) -> float | None:
        return self._objectives.get(trial_id)


def _row(table: str, trial_id: str) -> str:
    return next(line for line in table.splitlines() if line.split()[0] == trial_id)


def test_tokens_per_s_is_cumulative_tokens_over_training_seconds():
    assert tokens_per_s({"tokens": 2000, "wall_s": 8.0}) == 250.0
    assert tokens_per_s({"tokens": 0, "wall_s": 0.0}) is None
    assert tokens_per_s({}) is None


def test_running_trial_shows_tokens_per_second_and_finished_ones_do_not():
    table = progress_table(_State(), total=3, t0=0.0)
    assert table.splitlines()[0].split() == [
        "trial", "status", "stage", "tokens", "tok/s", "eval", "objective"
    ]  # fmt: skip
    assert _row(table, "a").split() == ["a", "running", "1", "2,000", "250", "4.000", "-"]
    assert _row(table, "b").split() == ["b", "completed", "1", "100", "-", "3.400", "2.000e+09"]
    assert "waiting for resources" not in table


def test_pending_trials_appear_with_their_wait_longest_first():
    table = progress_table(_State(), total=5, t0=0.0, pending=[("p1", 3.2), ("p2", 41.0)])
    lines = table.splitlines()
    assert lines[-3].split() == ["p2", "pending", "-", "-", "-", "-", "waiting", "41s", "for",
                                 "resources"]  # fmt: skip
    assert lines[-2].split()[:2] == ["p1", "pending"] and "waiting 3s for resources" in lines[-2]
    assert lines[-1].endswith("; 2 waiting for resources")
    assert "best so far 2.000e+09 FLOPs (b)" in lines[-1]


def test_started_trial_held_back_again_shows_as_pending_once():
    table = progress_table(_State(), total=3, t0=0.0, pending=[("a", 12.0)])
    rows = [line for line in table.splitlines() if line.split()[0] == "a"]
    assert len(rows) == 1
    assert rows[0].split()[:5] == ["a", "pending", "1", "2,000", "-"]
    assert rows[0].endswith("waiting 12s for resources")


def _callback(tty: bool) -> ProgressCallback:
    search = SimpleNamespace(state=_State())
    return ProgressCallback(search, total=3, every_s=0.0, tty=tty)  # type: ignore[arg-type]


def _tune_trial(trial_id: str, status: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status=status)


def test_callback_measures_how_long_each_pending_trial_has_waited():
    cb = _callback(tty=False)
    trials = [_tune_trial("a", "RUNNING"), _tune_trial("p", "PENDING")]
    assert cb.pending_trials(trials, now=100.0) == [("p", 0.0)]
    assert cb.pending_trials(trials, now=130.0) == [("p", 30.0)]
    trials[1].status = "RUNNING"  # placed: no longer waiting, forgotten
    assert cb.pending_trials(trials, now=140.0) == []
    trials[1].status = "PENDING"  # held back again: its wait starts afresh
    assert cb.pending_trials(trials, now=150.0) == [("p", 0.0)]


def test_piped_output_prints_plain_tables_one_below_the_other(capsys):
    cb = _callback(tty=False)
    trials = [_tune_trial("p", "PENDING")]
    cb.on_step_end(1, trials)
    cb.on_step_end(2, trials)
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert out.count("trial ") == 2 and out.count("waiting 0s for resources") == 2


def test_terminal_redraws_the_table_in_place(capsys):
    cb = _callback(tty=True)
    trials = [_tune_trial("p", "PENDING")]
    cb.on_step_end(1, trials)
    first = capsys.readouterr().out
    assert not first.startswith("\x1b")  # nothing above to overwrite yet
    n_lines = first.count("\n")  # the table and print's newline
    cb.on_step_end(2, trials)
    second = capsys.readouterr().out
    assert second.startswith(f"\x1b[{n_lines}F\x1b[J")  # up to the table's first line, clear
    assert second.removeprefix(f"\x1b[{n_lines}F\x1b[J").count("\n") == n_lines
    cb.on_trial_complete(3, trials, _tune_trial("b", "TERMINATED"))
    cb.on_step_end(4, trials)
    third = capsys.readouterr().out
    assert third.startswith("trial b finished: objective 2.000e+09\n")
    assert "\x1b[" not in third  # the finished line stays: the next table goes below it


def test_redraw_without_a_previous_table_is_the_table():
    assert redraw("x\ny", 0) == "x\ny"
    assert redraw("x\ny", 2) == "\x1b[2F\x1b[Jx\ny"


@pytest.mark.parametrize("tty,every_s", [(True, 2.0), (False, 20.0)])
def test_default_refresh_follows_the_output(tty, every_s):
    cb = ProgressCallback(SimpleNamespace(state=_State()), total=1, tty=tty)  # type: ignore[arg-type]
    assert cb.every_s == every_s
