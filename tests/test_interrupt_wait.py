"""Ctrl-C after the last trial has ended, while the reference run still trains (CI failure of
session 5).

Tune installs its own SIGINT handler for `fit()` and leaves it installed when the run ends
without a signal; that handler only logs, so a Ctrl-C while the driver waited for the reference
was swallowed and the search ended 0 after the reference finished. Now the driver's handler is
put back after `fit()` and a KeyboardInterrupt in the wait interrupts the search: the reference
is cancelled (it stays on record unfinished; --resume continues it) and the exit code is 130.
A Ctrl-C that Tune itself caught after the last trial ended (no trial unfinished) is read from
its handler: Tune puts the previous handler back only when it caught a signal.
"""

from __future__ import annotations

import signal
from types import SimpleNamespace

from progtune import tuning


class _Search:
    def __init__(self, interrupt: bool):
        self.settings = SimpleNamespace(num_samples=1, points=None, time_budget_s=None)
        self.state = SimpleNamespace(trials={}, reference=None, write=lambda force: None)
        self.interrupt, self.calls = interrupt, []
        self.reference = object()

    def wait_for_reference(self):
        self.calls.append("wait")
        if self.interrupt:
            raise KeyboardInterrupt
        self.reference = None

    def cancel_reference(self):
        self.calls.append("cancel")
        self.reference = None

    def tell_pending(self, give_up=True):
        self.calls.append("tell" if give_up else "keep pending")


class _Results(list):
    num_errors = 0


_DONE = _Results([SimpleNamespace(error=None, metrics={"done": True})])


def test_ctrl_c_while_waiting_for_the_reference_interrupts_the_search():
    search = _Search(interrupt=True)
    code, _ = tuning._finish(search, _DONE)
    assert code == 130
    assert search.calls == ["wait", "cancel", "keep pending"]


def test_a_reference_that_finishes_in_the_wait_ends_the_search_normally():
    search = _Search(interrupt=False)
    code, _ = tuning._finish(search, _DONE)
    assert code == 0
    assert search.calls == ["wait", "tell"]


def test_the_drivers_sigint_handler_is_put_back_after_tune():
    own = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, lambda *a: None)  # what Tune leaves behind
        tuning._restore_sigint(signal.default_int_handler)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, own)


def test_a_ctrl_c_tune_caught_after_the_last_trial_interrupts_the_search():
    search = _Search(interrupt=False)
    code, _ = tuning._finish(search, _DONE, signalled=True)
    assert code == 130
    assert search.calls == ["cancel", "keep pending"]  # no wait for the reference


def test_tune_caught_sigint_reads_which_handler_tune_left(monkeypatch):
    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)
    own = signal.getsignal(signal.SIGINT)
    try:
        # Tune's handler still installed: no signal came
        signal.signal(signal.SIGINT, lambda *a: None)
        assert not tuning._tune_caught_sigint(own)
        # Tune caught one and put ours back
        signal.signal(signal.SIGINT, own)
        assert tuning._tune_caught_sigint(own)
        # Tune told not to install a handler: ours stays, and says nothing
        monkeypatch.setenv("TUNE_DISABLE_SIGINT_HANDLER", "1")
        assert not tuning._tune_caught_sigint(own)
    finally:
        signal.signal(signal.SIGINT, own)


def test_a_restored_trial_ended_by_its_final_report_is_not_unfinished():
    """Ray 2.60 saved a trial that ended just before a Ctrl-C as TERMINATED with its final
    report but `done` False; the resumed search counted it unfinished and exited 130 without
    waiting for the reference (CI failure of session 7)."""
    search = _Search(interrupt=False)
    restored = _Results([SimpleNamespace(error=None, metrics={"final": True, "done": False})])
    code, _ = tuning._finish(search, restored)
    assert code == 0
    assert search.calls == ["wait", "tell"]
    unended = _Results([SimpleNamespace(error=None, metrics={"final": False, "done": False})])
    code, _ = tuning._finish(_Search(interrupt=False), unended)
    assert code == 130
