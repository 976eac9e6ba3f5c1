"""A shared Optuna study (issue 14 part 2): `--optuna-storage URL` puts the search's study in a
database optuna-dashboard can follow; `--resume` keeps it; a bad URL is one line, exit 2, before
Ray starts. Tested with SQLite; the slow test interrupts a real search with SIGINT and resumes it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import optuna
import pytest
from search_processes import Driver, live_trials, run_cli, wait_for

from progtune.cli import build_parser, main
from progtune.results import read_trials
from progtune.search_settings import build_settings, save_settings


def _args(tmp: Path, *extra: str):
    return build_parser().parse_args(
        ["search", "--space", "smoke", "--preset", "tiny", "--storage", str(tmp / "res"), *extra]
    )


def test_bad_url_is_one_line_and_exit_2_before_anything_starts(tmp_path, capsys):
    code = main(
        ["search", "--space", "smoke", "--preset", "tiny", "--storage", str(tmp_path / "res"),
         "--name", "x", "--optuna-storage", "nodb://nowhere"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("progtune: error: --optuna-storage nodb://")
    assert not (tmp_path / "res" / "x").exists()  # nothing written, no Ray


def test_unreachable_database_names_the_url_without_its_password(tmp_path):
    from progtune.errors import ProgtuneError

    url = f"sqlite:///{tmp_path}/no/such/folder/optuna.db"
    with pytest.raises(ProgtuneError, match="cannot be opened") as err:
        build_settings(_args(tmp_path, "--name", "x", "--optuna-storage", url))
    assert "\n" not in str(err.value)
    with pytest.raises(ProgtuneError) as err:
        build_settings(_args(tmp_path, "--name", "x", "--optuna-storage", "nodb://u:s3cret@h/db"))
    assert "s3cret" not in str(err.value) and "nodb://u:***@h/db" in str(err.value)


def test_url_saved_for_resume_with_a_relative_sqlite_path_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings, preset, config_file = build_settings(
        _args(tmp_path, "--name", "s", "--optuna-storage", "sqlite:///study.db")
    )
    assert settings.optuna_storage == f"sqlite:///{tmp_path}/study.db"
    assert (tmp_path / "study.db").exists()  # opened (tables made) before Ray would start
    save_settings(settings, preset, config_file)
    saved = json.loads((tmp_path / "res" / "s" / "search.json").read_text())
    assert saved["optuna_storage"] == settings.optuna_storage
    monkeypatch.chdir(tmp_path / "res")  # --resume from another folder finds the same file
    resumed, _, _ = build_settings(_args(tmp_path, "--name", "s", "--resume"))
    assert resumed.optuna_storage == settings.optuna_storage


def test_dry_run_checks_the_url_but_writes_no_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings, _, _ = build_settings(
        _args(tmp_path, "--dry-run", "--optuna-storage", "sqlite:///dry.db")
    )
    assert settings.optuna_storage == f"sqlite:///{tmp_path}/dry.db"
    assert not (tmp_path / "dry.db").exists()


def test_searcher_keeps_its_study_in_the_database_and_reopens_it(tmp_path):
    from progtune.optuna_searcher import make_searcher
    from progtune.search_state import SearchState

    url = f"sqlite:///{tmp_path}/study.db"
    settings, _, _ = build_settings(_args(tmp_path, "--name", "db", "--optuna-storage", url))
    state = SearchState(settings.exp_uri, "db", vocab_size=64, target_loss=None)
    searcher = make_searcher(settings, state, str(tmp_path / "unused.journal"))
    assert searcher.suggest("t1") is not None
    assert not (tmp_path / "unused.journal").exists()  # the database replaces the journal
    again = make_searcher(settings, state, None)  # what --resume builds: the same study
    assert [t.number for t in again._ot_study.trials] == [0]
    study = optuna.load_study(study_name="db", storage=url)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.RUNNING]


# ---------------------------------------------------------------------------- a real search
_SEARCH = ["--preset", "tiny", "--space", "smoke", "--num-samples", "2", "--max-concurrent", "1",
           "--cpus-per-trial", "1", "budget.tokens=65536", "eval.points=4"]  # fmt: skip


def _study_rows(db: Path) -> list[tuple[str, int, str]]:
    """(study name, trial number, state) of every trial in the SQLite file, read with sqlite3."""
    with sqlite3.connect(db) as con:
        return con.execute(
            "SELECT s.study_name, t.number, t.state FROM trials t "
            "JOIN studies s ON s.study_id = t.study_id ORDER BY t.number"
        ).fetchall()


@pytest.mark.slow
def test_sigint_then_resume_keeps_each_trial_once_in_the_sqlite_study(tmp_path):
    db = tmp_path / "study.db"
    url = f"sqlite:///{db}"
    exp = tmp_path / "res" / "q"
    args = [*_SEARCH, "--storage", str(tmp_path / "res"), "--name", "q", "--optuna-storage", url]
    d = Driver(tmp_path, args)
    try:
        # Interrupted early: the first trial (and the reference run) in flight, the second not
        # yet proposed; resumed, the trial continues as the same Optuna trial.
        wait_for(lambda: live_trials(exp, 10**9) or None, 400, d, "a trial training")
        os.kill(d.pid, signal.SIGINT)
        assert d.wait(300) == 130, d.shown()
    finally:
        d.stop()
    assert "optuna_storage" in (exp / "search.json").read_text()
    resumed = run_cli(tmp_path, "search", "--resume", "--name", "q", "--storage",
                      str(tmp_path / "res"))  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert not (exp / "optuna.journal").exists()
    rows = _study_rows(db)
    trials = read_trials(exp / "trials.parquet")
    search = trials[trials["role"] == "search"]
    assert len(search) == 2 and search["trial_id"].is_unique
    assert [(name, n) for name, n, _ in rows] == [("q", 0), ("q", 1)], rows  # each trial once
    assert {state for _, _, state in rows} <= {"COMPLETE", "PRUNED"}, rows
    study = optuna.load_study(study_name="q", storage=url)
    told = sorted(t.value for t in study.trials if t.value is not None)
    assert len(told) == 2 and all(v > 0 for v in told)
