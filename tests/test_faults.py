"""Faults progtune survives (issue 5), proven with real processes on this machine - no mocks.

1. a trial process SIGKILLed mid-training is retried from its last checkpoint; its curve has no
   gaps or duplicates and equals an uninterrupted `progtune train` of the same config bitwise;
2. the driver SIGKILLed mid-search: `--resume` finishes the experiment, every trial once, the
   finished reference run reused; SIGINT: exit 130 and the printed resume command finishes it;
3. a worker node of a `ray start` cluster (127.0.0.1 only) lost mid-search: its trial continues
   from its checkpoint on the replacement node; losing the TargetBoard actor (xfail: a bug);
4. a trial diverging (absurd learning rate) ends `diverged`, Optuna gets a finite value;
5. readers never see a partial Parquet file; a killed write leaves the previous version intact;
6. storage that cannot be written fails at start: exit 2, one line naming --storage, no Ray.

Only processes started here are ever stopped: a search's own processes are found as descendants
of its driver or by its private Ray temp folder (/tmp/pt-XXXX, in every Ray process's command
line or environment); never `ray stop`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from progtune.config import KNOB_TYPES, flatten, resolve
from progtune.errors import ResultsError
from progtune.results import read_curves, read_trials

pytestmark = pytest.mark.slow

PY = sys.executable
PROGTUNE = str(Path(sys.executable).with_name("progtune"))  # the console script
RAY = str(Path(sys.executable).with_name("ray"))
_RAY_TMP = re.compile(r"/tmp/pt-[A-Za-z0-9_]+")
CURVE_COLUMNS = ("step", "tokens", "flops", "stage", "unique_layers", "mean_depth", "lr")
CURVE_COLUMNS += ("train_loss", "eval_loss")  # everything but the wall-clock columns


# ---------------------------------------------------------------------------- processes
def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process now."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        out[int(name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd)
    return out


def _descendants(root: int, table: dict[int, tuple[int, str]] | None = None) -> dict[int, str]:
    table = table if table is not None else _proc_table()
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _) in table.items():
        children[ppid].append(pid)
    out, todo = {}, list(children[root])
    while todo:
        pid = todo.pop()
        out[pid] = table[pid][1]
        todo += children[pid]
    return out


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _marked(marker: str) -> list[int]:
    """Processes whose command line or environment holds `marker` (this process excluded)."""
    raw = marker.encode()
    return [
        pid
        for pid, (_, cmd) in _proc_table().items()
        if pid != os.getpid() and (marker in cmd or raw in _environ(pid))
    ]


def _kill(pids, sig=signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_marked(marker: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _marked(marker)
        if not pids:
            return
        _kill(pids, sig)
        time.sleep(2)


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PROGTUNE_CACHE": str(tmp / "cache"), **extra}
    env.pop("RAY_ADDRESS", None)
    return env


class Driver:
    """A `progtune search` process started in the background; output goes to files."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str] | None = None):
        n = len(list(tmp.glob("driver-*.out")))
        self.out_path, self.err_path = tmp / f"driver-{n}.out", tmp / f"driver-{n}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [PY, "-m", "progtune.cli", "search", *args],
                stdout=out,
                stderr=err,
                cwd=tmp,
                env=env or _env(tmp),
                start_new_session=True,  # a signal for the terminal's group never reaches it
            )
        self.ray_tmp: set[str] = set()  # its private Ray temp folder, once seen

    @property
    def pid(self) -> int:
        return self.proc.pid

    def processes(self) -> dict[int, str]:
        """Its descendants now (Ray's gcs, raylet, workers), noting its Ray temp folder."""
        procs = _descendants(self.pid)
        for cmd in procs.values():
            self.ray_tmp.update(_RAY_TMP.findall(cmd))
        return procs

    def trial_workers(self) -> list[int]:
        return [p for p, cmd in self.processes().items() if cmd.startswith("ray::ImplicitFunc")]

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def shown(self) -> str:
        return f"stdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-3000:]}"

    def stop(self) -> None:
        """Kill it and everything it started (by descent, then by its Ray temp folder)."""
        procs = self.processes() if self.proc.poll() is None else {}
        if self.proc.poll() is None:
            _kill([self.pid, *procs])
            self.proc.wait(timeout=30)
        for folder in self.ray_tmp:
            _kill_marked(folder + "/")  # "/": never a longer name that starts the same
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def drivers():
    """Start searches with drivers(tmp, *args); every one is stopped with its Ray at the end."""
    started: list[Driver] = []

    def start(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Driver:
        d = Driver(tmp, list(args), env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def _wait_for(cond: Callable[[], Any], timeout: float, driver: Driver, what: str) -> Any:
    """Poll cond() until it returns something truthy; fail if the driver exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        driver.processes()  # keep noting its Ray temp folder for the clean-up
        if driver.proc.poll() is not None:
            pytest.fail(
                f"the search exited ({driver.proc.returncode}) before {what}\n" + driver.shown()
            )
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}\n" + driver.shown())


def _read(reader: Callable, path: Path) -> pd.DataFrame | None:
    try:
        return reader(path)
    except ResultsError:  # not written yet
        return None


def _cli(tmp: Path, *args: str, timeout: float = 600, env=None, exe=None):
    return subprocess.run(
        [*(exe or [PY, "-m", "progtune.cli"]), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp,
        env=env or _env(tmp),
    )


# ---------------------------------------------------------------------------- checks
def _result_lines(exp: Path, trial_id: str) -> list[dict]:
    """Tune's per-report log of a trial: every metric plus the pid of the process that sent it."""
    text = (exp / f"trial_{trial_id}" / "result.json").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _live(exp: Path, half: int) -> dict[str, list[dict]]:
    """Trials early in training now: >= 2 reports, not final, at most `half` steps done.

    Read from Tune's result.json, which the driver appends to as each report arrives (the
    Parquet files are rewritten at most every few seconds).
    """
    out = {}
    for path in exp.glob("trial_*/result.json"):
        lines = []
        for line in path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:  # a line being written
                break
        if len(lines) >= 2 and not lines[-1].get("final") and lines[-1]["step"] <= half:
            out[path.parent.name.removeprefix("trial_")] = lines
    return out


def _expected_steps(**overrides: Any) -> list[int]:
    from progtune.train import Plan

    return Plan.of(resolve("tiny", overrides=overrides)).eval_steps


def _assert_every_trial_once(exp: Path, n_search: int) -> pd.DataFrame:
    trials = read_trials(exp / "trials.parquet")
    assert trials["trial_id"].is_unique, trials[["trial_id", "role", "status"]]
    assert sorted(trials["role"]) == ["reference"] + ["search"] * n_search
    assert set(trials["status"]) == {"completed"}, trials[["trial_id", "status", "error"]]
    curves = read_curves(exp / "curves.parquet")
    assert set(curves["trial_id"]) == set(trials["trial_id"])
    for tid, c in curves.groupby("trial_id"):
        assert c["step"].is_unique and c["step"].is_monotonic_increasing, (tid, list(c["step"]))
    return trials


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value.item() if hasattr(value, "item") else value


def _text(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _knob_overrides(row: pd.Series) -> list[str]:
    """KEY=VALUE for every knob of a trials.parquet row that differs from the tiny preset."""
    base = flatten(resolve("tiny"))
    out = []
    for knob in KNOB_TYPES:
        if knob.startswith("runtime.") or knob == "data.cache_dir":
            continue
        value = _plain(row[knob])
        if value is not None and value != base[knob]:
            out.append(f"{knob}={_text(value)}")
    return out


# ---------------------------------------------------------------------------- 1. trial SIGKILL
def test_trial_sigkill_is_retried_from_checkpoint_and_equals_an_uninterrupted_run(
    tmp_path, drivers
):
    knobs = ["seed=0", "budget.tokens=262144", "eval.points=16"]  # ~1000 steps, a row per 64
    d = drivers(tmp_path, "--space", "smoke", "--preset", "tiny", "--num-samples", "1",
                "--storage", str(tmp_path / "res"), "--name", "k", "--cpus-per-trial", "1",
                *knobs)  # fmt: skip
    exp = tmp_path / "res" / "k"

    def trial_training():
        live = _live(exp, 512)  # of 1024 steps
        return live and (next(iter(live.values()))[-1]["pid"], d.trial_workers())

    reporting, workers = _wait_for(trial_training, 300, d, "the trial's first curve rows")
    assert workers == [reporting], (workers, reporting)
    killed = reporting
    os.kill(killed, signal.SIGKILL)
    assert d.wait(600) == 0, d.shown()

    trials = _assert_every_trial_once(exp, 1)
    trial = trials[trials["role"] == "search"].iloc[0]
    tid = trial["trial_id"]
    # The kill really hit this trial, and its retry started from a checkpoint, not from step 0.
    lines = _result_lines(exp, tid)
    before = [r for r in lines if r["pid"] == killed]
    after = [r for r in lines if r["pid"] != killed]
    assert before and after, {r["pid"] for r in lines}
    assert after[0]["resumed_from"] > 0, after[0]
    assert not before[-1].get("final") and after[-1]["final"]

    curves = read_curves(exp / "curves.parquet")
    curve = curves[curves["trial_id"] == tid].reset_index(drop=True)
    assert list(curve["step"]) == _expected_steps(**{"budget.tokens": 262144, "eval.points": 16})

    # The same config and seed, uninterrupted, on the same thread count.
    overrides = _knob_overrides(trial)
    assert "lr.peak" in " ".join(overrides)  # the searched knobs came from the trial's row
    ref = _cli(tmp_path, "train", "--preset", "tiny", "--out", str(tmp_path / "plain"),
               "--quiet", *overrides, "runtime.threads=1")  # fmt: skip
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-2000:]
    plain = read_curves(tmp_path / "plain" / "curves.parquet")
    for col in CURVE_COLUMNS:
        pd.testing.assert_series_equal(curve[col], plain[col], check_exact=True, obj=col)
    plain_row = read_trials(tmp_path / "plain" / "trials.parquet").iloc[0]
    assert plain_row["config_hash"] == trial["config_hash"]
    for col in ("final_eval_loss", "total_flops", "total_tokens", "steps"):
        assert trial[col] == plain_row[col], col


# ---------------------------------------------------------------------------- 2. driver faults
# 3 trials one at a time beside the reference run: the reference (from scratch, the slowest run)
# finishes while a later trial is early in its training, and the interruption hits that trial.
_DRIVER_SEARCH = ["--space", "smoke", "--preset", "tiny", "--num-samples", "3",
                  "--max-concurrent", "1", "--cpus-per-trial", "1",
                  "budget.tokens=262144", "eval.points=8"]  # fmt: skip
_DRIVER_STEPS = {"budget.tokens": 262144, "eval.points": 8}
_DRIVER_HALF = 512  # of 1024 steps


def _reference_done_and_trial_training(exp: Path) -> Callable[[], str | None]:
    """The id of a search trial early in its training, once the reference run is done."""

    def cond():
        t = _read(read_trials, exp / "trials.parquet")
        if t is None:
            return None
        ref = t[t["role"] == "reference"]
        if ref.empty or ref["status"].iloc[0] != "completed":
            return None
        live = _live(exp, _DRIVER_HALF)
        return next(iter(live), None)

    return cond


class Interrupted:
    """An experiment whose driver was stopped mid-search and then resumed."""

    exp: Path
    in_flight: str  # the trial that was training when the driver stopped
    driver: Driver
    resumed: subprocess.CompletedProcess
    command: list[str]  # the resume command the driver printed (SIGINT)
    left_behind: list[int]  # its Ray processes still alive 3 s after the driver ended
    folder_left: list[str]  # its Ray temp folder, if still there then


def _interrupt(tmp: Path, name: str, sig: int) -> Interrupted:
    out = Interrupted()
    storage = tmp / "res"
    out.exp = storage / name
    d = out.driver = Driver(tmp, [*_DRIVER_SEARCH, "--storage", str(storage), "--name", name])
    try:
        out.in_flight = _wait_for(
            _reference_done_and_trial_training(out.exp), 400, d, "reference done + trial running"
        )
        d.processes()  # note its Ray temp folder while the driver is alive
        os.kill(d.pid, sig)
        d.wait(300)
        time.sleep(3)
        out.left_behind = [p for folder in d.ray_tmp for p in _marked(folder + "/")]
        out.folder_left = [folder for folder in d.ray_tmp if os.path.exists(folder)]
        if sig == signal.SIGKILL:
            for folder in d.ray_tmp:  # a crashed machine takes its Ray along
                _kill_marked(folder + "/")
            out.command = ["progtune", "search", "--resume", "--name", name, "--storage",
                           str(storage)]  # fmt: skip
        else:
            lines = d.stderr.splitlines()
            at = [i for i, ln in enumerate(lines) if "continue with:" in ln]
            out.command = shlex.split(lines[at[-1] + 1]) if at else []
            if d.proc.returncode != 130 or not at:
                return out  # the test reports it
        # The printed command, as a user would type it (the console script).
        out.resumed = _cli(tmp, *out.command[1:], exe=[PROGTUNE])
    finally:
        d.stop()
    return out


@pytest.fixture(scope="module")
def driver_killed(tmp_path_factory) -> Interrupted:
    return _interrupt(tmp_path_factory.mktemp("sigkill"), "d", signal.SIGKILL)


@pytest.fixture(scope="module")
def driver_interrupted(tmp_path_factory) -> Interrupted:
    return _interrupt(tmp_path_factory.mktemp("sigint"), "i", signal.SIGINT)


def _check_finished_experiment(run: Interrupted) -> None:
    resumed = run.resumed
    shown = resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert resumed.returncode == 0, shown
    assert "reusing the finished reference run" in resumed.stdout, shown
    assert "reference run (from scratch, full depth) started" not in resumed.stdout, shown
    trials = _assert_every_trial_once(run.exp, 3)
    # Optuna's journal: the three trials, each told once, COMPLETE with a finite value.
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run.exp / "optuna.journal"))
    )
    study = optuna.load_study(study_name=run.exp.name, storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(study.trials) == 3 and len(done) == 3, study.trials
    assert all(math.isfinite(t.value) for t in done)
    values = sorted(trials[trials["role"] == "search"]["objective"])
    assert sorted(t.value for t in done) == pytest.approx(values)
    # The trial in flight really was continued from a checkpoint by another process.
    lines = _result_lines(run.exp, run.in_flight)
    first_pid = lines[0]["pid"]
    after = [r for r in lines if r["pid"] != first_pid]
    assert after and after[0]["resumed_from"] > 0 and after[-1]["final"], lines[-3:]
    # Trials that were not in flight have whole curves.
    curves = read_curves(run.exp / "curves.parquet")
    for tid in set(trials["trial_id"]) - {run.in_flight}:
        steps = list(curves[curves["trial_id"] == tid]["step"])
        assert steps == _expected_steps(**_DRIVER_STEPS), (tid, steps)


def test_driver_sigkill_then_resume_finishes_every_trial_once(driver_killed):
    assert driver_killed.driver.proc.returncode == -signal.SIGKILL
    _check_finished_experiment(driver_killed)


def test_sigint_exits_130_and_the_printed_command_finishes(driver_interrupted):
    run = driver_interrupted
    assert run.driver.proc.returncode == 130, run.driver.shown()
    storage = str(run.exp.parent)
    assert run.command == ["progtune", "search", "--resume", "--name", "i", "--storage", storage]
    assert "Traceback" not in run.driver.stderr, run.driver.shown()
    # A clean stop: its private Ray is shut down and its temp folder removed.
    assert run.driver.ray_tmp and not run.left_behind, run.left_behind
    assert not run.folder_left, run.folder_left
    _check_finished_experiment(run)


@pytest.mark.parametrize("how", ["sigkill", "sigint"])
def test_trial_in_flight_at_the_interruption_keeps_its_whole_curve(request, how):
    run = request.getfixturevalue({"sigkill": "driver_killed", "sigint": "driver_interrupted"}[how])
    assert run.resumed.returncode == 0
    trials = read_trials(run.exp / "trials.parquet")
    curves = read_curves(run.exp / "curves.parquet")
    curve = curves[curves["trial_id"] == run.in_flight].reset_index(drop=True)
    assert list(curve["step"]) == _expected_steps(**_DRIVER_STEPS), list(curve["step"])
    # ... and its objective is FLOPs to target on that whole curve.
    from progtune.results import flops_to_target

    row = trials[trials["trial_id"] == run.in_flight].iloc[0]
    reached = flops_to_target(curve, float(row["target_loss"]))
    if reached is not None:
        assert row["objective"] == pytest.approx(reached, rel=1e-12)


# ---------------------------------------------------------------------------- 3. worker node lost
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A Ray cluster of `ray start` nodes on 127.0.0.1 with token auth (as in test_two_node.py).

    The head runs no trials (0 CPUs, like ray_cluster.yaml's head). Every process of a worker
    node carries PT_FAULT_NODE=<uuid> in its environment (Ray's daemons and workers inherit the
    environment of the `ray start` that made them), so one node can be killed whole without
    touching the head, the other nodes or anybody else's Ray.
    """

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="pt2n-", dir="/tmp")  # short: Unix socket paths
        token = Path(self.tmp) / "auth_token"
        token.write_text(os.urandom(32).hex())
        token.chmod(0o600)
        self.address = f"127.0.0.1:{_free_port()}"
        env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        env.pop("RAY_ADDRESS", None)
        env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        self.env = env
        self.markers: list[str] = []
        self.common = [
            "--object-store-memory=100000000",
            f"--temp-dir={self.tmp}",
            "--disable-usage-stats",
        ]

    def start_head(self) -> None:
        port = self.address.split(":")[1]
        subprocess.run(
            [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
             "--include-dashboard=false", "--num-cpus=0", *self.common],
            env={**self.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def add_worker(self, cpus: int) -> str:
        """Start a worker node; returns the marker in the environment of all its processes."""
        marker = f"PT_FAULT_NODE={uuid.uuid4().hex}"
        self.markers.append(marker)
        key, value = marker.split("=")
        # `ray start --address=127.0.0.1:P` would rewrite 127.0.0.1 to the routable address:
        # Ray's own CLI with that rewrite disabled, so nothing ever leaves loopback.
        worker = (
            "import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda h: h\n"
            "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
        )
        subprocess.run(
            [PY, "-c", worker, "start", f"--address={self.address}", f"--num-cpus={cpus}",
             *self.common],
            env={**self.env, key: value}, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        return marker

    def stop(self) -> None:
        for marker in [*self.markers, self.tmp + "/"]:
            _kill_marked(marker)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def cluster():
    c = Cluster()
    try:
        c.start_head()
        yield c
    finally:
        c.stop()


def test_lost_worker_node_trial_is_rescheduled_and_finishes(cluster, tmp_path, drivers):
    first = cluster.add_worker(2)
    storage = tmp_path / "res"
    d = drivers(tmp_path, "--address", cluster.address, "--space", "smoke", "--preset", "tiny",
                "--num-samples", "3", "--cpus-per-trial", "1", "--storage", str(storage),
                "--name", "wn", "budget.tokens=262144", "eval.points=8",
                env={**cluster.env, "PROGTUNE_CACHE": str(tmp_path / "cache")})  # fmt: skip
    exp = storage / "wn"

    def trial_training_on_first_node():
        # After the reference run is done (a lost reference is another case, see below).
        t = _read(read_trials, exp / "trials.parquet")
        ref = t[t["role"] == "reference"] if t is not None else None
        if ref is None or ref.empty or ref["status"].iloc[0] != "completed":
            return None
        table = _proc_table()
        on_node = [p for p in _marked(first) if table.get(p, (0, ""))[1].startswith("ray::Impl")]
        for tid, lines in _live(exp, 512).items():  # of 1024 steps
            if lines[-1]["pid"] in on_node:
                return tid, lines[-1]["pid"]
        return None

    tid, pid = _wait_for(trial_training_on_first_node, 400, d, "a trial training on the node")
    _kill(_marked(first))  # the whole node: raylet, agents, workers
    cluster.add_worker(2)  # its replacement, as the autoscaler would start
    assert d.wait(600) == 0, d.shown()
    assert not _marked(first)
    trials = _assert_every_trial_once(exp, 3)
    lines = _result_lines(exp, tid)
    after = [r for r in lines if r["pid"] != pid]
    assert after and after[0]["resumed_from"] > 0, "not continued from its checkpoint"
    curves = read_curves(exp / "curves.parquet")
    steps = _expected_steps(**{"budget.tokens": 262144, "eval.points": 8})
    for t in trials["trial_id"]:
        assert list(curves[curves["trial_id"] == t]["step"]) == steps, t


def test_search_survives_losing_the_target_board(tmp_path, drivers):
    """Seen with a two-node cluster when the board actor sat on the lost node; reproduced
    deterministically here by killing the board's process while the reference run trains."""
    d = drivers(tmp_path, "--space", "smoke", "--preset", "tiny", "--num-samples", "1",
                "--cpus-per-trial", "1", "--storage", str(tmp_path / "res"), "--name", "b",
                "budget.tokens=262144", "eval.points=8")  # fmt: skip

    def board():
        return [p for p, cmd in d.processes().items() if cmd.startswith("ray::TargetBoard")]

    _kill(_wait_for(board, 300, d, "the TargetBoard actor"))
    assert d.wait(600) == 0, d.shown()
    _assert_every_trial_once(tmp_path / "res" / "b", 1)


# ---------------------------------------------------------------------------- 4 + 5. divergence,
# and a reader polling the Parquet files while that search runs
_DIVERGING_SPACE = '''"""Trial 0: an absurd learning rate (diverges); the others: sane."""


def define(trial):
    if trial.number == 0:
        return {"lr.peak": 1e4}
    return {"lr.peak": trial.suggest_float("lr.peak", 1e-3, 3e-3, log=True)}
'''


def _pd_one_open(path: Path) -> pd.DataFrame:
    with open(path, "rb") as f:
        return pd.read_parquet(f)


class Reader(threading.Thread):
    """Reads trials.parquet and curves.parquet as fast as it can until stopped.

    Before a file's first write, "not there yet" is fine; after it, every read must succeed.
    """

    def __init__(self, exp: Path):
        super().__init__(daemon=True)
        self.exp = exp
        self.done = threading.Event()
        self.reads: dict[str, int] = defaultdict(int)
        self.errors: list[str] = []
        self.trial_counts: list[int] = []

    def _one(self, key: str, read: Callable, path: Path) -> Any:
        try:
            out = read(path)
        except (ResultsError, FileNotFoundError) as exc:
            if self.reads[key] == 0 and ("no " in str(exc) or isinstance(exc, FileNotFoundError)):
                return None  # not written yet
            self.errors.append(f"{key}: {type(exc).__name__}: {exc}")
            return None
        except Exception as exc:
            self.errors.append(f"{key}: {type(exc).__name__}: {exc}")
            return None
        self.reads[key] += 1
        return out

    def run(self) -> None:
        trials, curves = self.exp / "trials.parquet", self.exp / "curves.parquet"
        while not self.done.is_set():
            t = self._one("read_trials", read_trials, trials)
            if t is not None:
                self.trial_counts.append(len(t))
            self._one("read_curves", read_curves, curves)
            # pandas through one open file: pd.read_parquet(path) opens a local path twice and
            # can mix two versions (README, bench/parquet_reader_race.py).
            self._one("pd.read_parquet trials", _pd_one_open, trials)
            self._one("pd.read_parquet curves", _pd_one_open, curves)


@pytest.fixture(scope="module")
def diverging(tmp_path_factory):
    """A search whose trial 0 diverges, with a Reader polling its results throughout."""
    tmp = tmp_path_factory.mktemp("diverge")
    (tmp / "diverging.py").write_text(_DIVERGING_SPACE)
    exp = tmp / "res" / "dv"
    reader = Reader(exp)
    reader.start()
    d = Driver(tmp, ["--space", str(tmp / "diverging.py"), "--preset", "tiny",
                     "--num-samples", "2", "--cpus-per-trial", "1",
                     "--storage", str(tmp / "res"), "--name", "dv"])  # fmt: skip
    try:
        rc = d.wait(600)
    finally:
        reader.done.set()
        reader.join(60)
        d.stop()
    return tmp, exp, rc, d, reader


def test_diverged_trial_is_recorded_and_the_search_goes_on(diverging):
    tmp, exp, rc, d, _ = diverging
    # A diverged trial is a result (a bad configuration), not a failure of the search: exit 0.
    assert rc == 0, d.shown()
    trials = read_trials(exp / "trials.parquet")
    assert trials["trial_id"].is_unique and len(trials) == 3
    search = trials[trials["role"] == "search"]
    bad = search[search["lr.peak"] == 1e4]
    good = search[search["lr.peak"] != 1e4]
    assert len(bad) == 1 and len(good) == 1
    bad = bad.iloc[0]
    assert bad["status"] == "diverged"
    assert set(good["status"]) == {"completed"}
    assert trials[trials["role"] == "reference"]["status"].iloc[0] == "completed"
    assert pd.isna(bad["final_eval_loss"]) and pd.isna(bad["flops_to_target"])
    # The surrogate: finite, and above a whole from-scratch budget and every completed trial.
    ref = trials[trials["role"] == "reference"].iloc[0]
    value = float(bad["objective"])
    assert math.isfinite(value)
    assert value > ref["total_flops"] and value > good["objective"].max()
    curves = read_curves(exp / "curves.parquet")
    curve = curves[curves["trial_id"] == bad["trial_id"]]
    best = curve["eval_loss"].dropna().min()  # the finite evaluations (step 0 at least)
    assert value >= ref["total_flops"] * (best / bad["target_loss"]) ** 10 * (1 - 1e-9)
    assert curve["eval_loss"].isna().iloc[-1], "the last row is the non-finite evaluation"

    # Optuna was told COMPLETE with that finite value.
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal"))
    )
    study = optuna.load_study(study_name="dv", storage=storage)
    first = next(t for t in study.trials if t.number == 0)
    assert first.state.name == "COMPLETE" and first.value == pytest.approx(value, rel=1e-12)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]

    # The report shows it.
    report = _cli(tmp, "report", str(exp), timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "diverged" in report.stdout, report.stdout[-3000:]


def test_reader_never_sees_a_partial_results_file(diverging):
    _, _, rc, d, reader = diverging
    assert rc == 0, d.shown()
    assert not reader.errors, reader.errors[:5]
    for key in ("read_trials", "read_curves", "pd.read_parquet trials", "pd.read_parquet curves"):
        assert reader.reads[key] >= 20, dict(reader.reads)  # it really read during the search
    assert reader.trial_counts == sorted(reader.trial_counts), "a trial row disappeared"
    assert reader.trial_counts[-1] == 3


# ---------------------------------------------------------------------------- 5. killed write
_WRITER = textwrap.dedent(
    """
    import io, os, sys, time
    from pathlib import Path
    import pyarrow.parquet as pq
    from progtune.results import write_curves

    dest, mode, flag = sys.argv[1], sys.argv[2], Path(sys.argv[3])

    def rows(n):
        return [{"experiment": "x", "trial_id": "t", "step": i, "eval_loss": float(i)}
                for i in range(n)]

    write_curves(rows(3), dest)  # the previous version

    def hang(*args):
        flag.write_text("in the write")
        time.sleep(600)

    if mode == "fsync":  # the whole new file is in the temp file, not yet synced or renamed
        os.fsync = hang
    else:  # half of the new file's bytes are out, then the process dies
        real = pq.write_table

        def half(table, where, **kwargs):
            buf = io.BytesIO()
            real(table, buf, **kwargs)
            where.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            where.flush()
            hang()

        pq.write_table = half
    write_curves(rows(5000), dest)
    """
)


@pytest.mark.parametrize("mode", ["fsync", "half-written"])
def test_killed_write_leaves_the_previous_version_intact(tmp_path, mode):
    import pyarrow.parquet as pq

    folder = tmp_path / "exp"
    dest, flag = folder / "curves.parquet", tmp_path / "flag"
    proc = subprocess.Popen([PY, "-c", _WRITER, str(dest), mode, str(flag)], env=_env(tmp_path))
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None, "the writer exited before the second write"
            assert time.monotonic() < deadline, "the writer never reached the second write"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    temps = [p for p in folder.iterdir() if p != dest]
    assert len(temps) == 1 and temps[0].name.startswith("."), temps  # killed mid-write
    if mode == "half-written":
        with pytest.raises(Exception):  # noqa: B017 - the temp file is not a Parquet file
            pq.read_table(temps[0])
    # The previous version, whole, by every reader; the temp file is never taken as results.
    for df in (
        read_curves(dest),
        pd.read_parquet(dest),
        read_curves(folder),
        pd.read_parquet(folder),
    ):
        assert list(df["step"]) == [0, 1, 2]


# ---------------------------------------------------------------------------- 6. storage
_NO_RAY_PROBE = textwrap.dedent(
    """
    import atexit, os, sys
    atexit.register(lambda: open(os.environ["PT_RAY_PROBE"], "w").write(
        "ray" if "ray" in sys.modules else "no-ray"))
    """
)


def _run_probed(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess, str, float]:
    """The CLI with a sitecustomize that records whether `ray` was ever imported."""
    probe_dir = tmp / "_probe"
    probe_dir.mkdir(exist_ok=True)
    (probe_dir / "sitecustomize.py").write_text(_NO_RAY_PROBE)
    env = _env(tmp, PYTHONPATH=str(probe_dir), PT_RAY_PROBE=str(probe_dir / "ray.txt"))
    t0 = time.monotonic()
    out = _cli(tmp, *args, timeout=120, env=env)
    return out, (probe_dir / "ray.txt").read_text(), time.monotonic() - t0


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "_probe" not in p.parts)


@pytest.mark.parametrize(
    "storage",
    ["{tmp}/afile/sub", "file://{tmp}/afile/sub", "/proc/progtune-no-such/sub", "/sys/progtune-x"],
    ids=["under-a-file", "file-uri-under-a-file", "proc", "sysfs"],
)
def test_unwritable_storage_fails_at_start(tmp_path, storage):
    (tmp_path / "afile").write_text("not a folder\n")
    storage = storage.replace("{tmp}", str(tmp_path))
    before = _tree(tmp_path)
    args = ["--space", "smoke", "--preset", "tiny", "--num-samples", "1", "--name", "x"]
    out, ray, took = _run_probed(tmp_path, "search", *args, "--storage", storage)
    shown = out.stdout[-2000:] + out.stderr[-2000:]
    assert out.returncode == 2, shown
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"--storage {storage} is not writable" in lines[0], shown
    assert "Traceback" not in shown and out.stdout == "", shown  # not even the data was prepared
    assert ray == "no-ray" and took < 20, (ray, took)
    assert _tree(tmp_path) == before and (tmp_path / "afile").read_text() == "not a folder\n"
    assert not Path(storage.removeprefix("file://")).exists()


def test_file_uri_storage_to_a_new_folder_is_accepted(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    storage = f"file://{tmp_path}/new/sub"
    # A corpus error comes after the storage check: seeing it means --storage was accepted.
    out, ray, _ = _run_probed(tmp_path, "search", "--space", "smoke", "--preset", "tiny",
                              "--storage", storage, "--name", "x",
                              f"data.corpus={tmp_path}/empty.txt")  # fmt: skip
    assert out.returncode == 2 and ray == "no-ray"
    assert "holds no text" in out.stderr, out.stderr
