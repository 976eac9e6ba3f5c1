"""Real `progtune search` processes for the fault tests: start, watch, read, stop what was started.

Only processes started here are ever stopped: a search's own processes are found as descendants
of its driver or by its private Ray temp folder (/tmp/pt-XXXX, in every Ray process's command
line or environment); never `ray stop`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from progtune.config import KNOB_TYPES, from_flat, resolve
from progtune.errors import ResultsError
from progtune.results import read_curves, read_trials

PY = sys.executable
PROGTUNE = str(Path(sys.executable).with_name("progtune"))  # the console script
_RAY_TMP = re.compile(r"/tmp/pt-[A-Za-z0-9_]+")


# ---------------------------------------------------------------------------- processes
def proc_table() -> dict[int, tuple[int, str]]:
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


def descendants(root: int, table: dict[int, tuple[int, str]] | None = None) -> dict[int, str]:
    """pid -> command line of every process below `root`."""
    table = table if table is not None else proc_table()
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


def marked(marker: str) -> list[int]:
    """Processes whose command line or environment holds `marker` (this process excluded)."""
    raw = marker.encode()
    return [
        pid
        for pid, (_, cmd) in proc_table().items()
        if pid != os.getpid() and (marker in cmd or raw in _environ(pid))
    ]


def kill(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_marked(marker: str) -> None:
    """SIGTERM, then SIGKILL, every process `marked(marker)`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = marked(marker)
        if not pids:
            return
        kill(pids, sig)
        time.sleep(2)


def search_env(tmp: Path, **extra: str) -> dict[str, str]:
    """This environment with a private token cache and no inherited RAY_ADDRESS."""
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
                env=env or search_env(tmp),
                start_new_session=True,  # a signal for the terminal's group never reaches it
            )
        self.ray_tmp: set[str] = set()  # its private Ray temp folder, once seen

    @property
    def pid(self) -> int:
        return self.proc.pid

    def processes(self) -> dict[int, str]:
        """Its descendants now (Ray's gcs, raylet, workers), noting its Ray temp folder."""
        procs = descendants(self.pid)
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
            kill([self.pid, *procs])
            self.proc.wait(timeout=30)
        for folder in self.ray_tmp:
            kill_marked(folder + "/")  # "/": never a longer name that starts the same
            shutil.rmtree(folder, ignore_errors=True)


def wait_for(cond: Callable[[], Any], timeout: float, driver: Driver, what: str) -> Any:
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


def read_or_none(reader: Callable, path: Path) -> pd.DataFrame | None:
    """reader(path), or None while the file is not written yet."""
    try:
        return reader(path)
    except ResultsError:
        return None


def run_cli(tmp: Path, *args: str, timeout: float = 600, env=None, exe=None):
    """`progtune ARGS` (python -m progtune.cli unless `exe`), output captured."""
    return subprocess.run(
        [*(exe or [PY, "-m", "progtune.cli"]), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp,
        env=env or search_env(tmp),
    )


# ---------------------------------------------------------------------------- reading a search
def result_lines(exp: Path, trial_id: str) -> list[dict]:
    """Tune's per-report log of a trial: every metric plus the pid of the process that sent it."""
    text = (exp / f"trial_{trial_id}" / "result.json").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def live_trials(exp: Path, half: int) -> dict[str, list[dict]]:
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


def reference_completed(exp: Path) -> bool:
    """trials.parquet records the reference run as completed (so the target is known)."""
    t = read_or_none(read_trials, exp / "trials.parquet")
    if t is None:
        return False
    ref = t[t["role"] == "reference"]
    return not ref.empty and ref["status"].iloc[0] == "completed"


def expected_steps(**overrides: Any) -> list[int]:
    from progtune.train import Plan

    return Plan.of(resolve("tiny", overrides=overrides)).eval_steps


def assert_every_trial_once(exp: Path, n_search: int) -> pd.DataFrame:
    trials = read_trials(exp / "trials.parquet")
    assert trials["trial_id"].is_unique, trials[["trial_id", "role", "status"]]
    assert sorted(trials["role"]) == ["reference"] + ["search"] * n_search
    assert set(trials["status"]) == {"completed"}, trials[["trial_id", "status", "error"]]
    curves = read_curves(exp / "curves.parquet")
    assert set(curves["trial_id"]) == set(trials["trial_id"])
    for tid, c in curves.groupby("trial_id"):
        assert c["step"].is_unique and c["step"].is_monotonic_increasing, (tid, list(c["step"]))
    return trials


def plain(value: Any) -> Any:
    """pandas NA / NaN -> None, numpy scalars -> Python, tuples element-wise."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    return value.item() if hasattr(value, "item") else value


# ---------------------------------------------------------------------------- the objective
def surrogate(trials: pd.DataFrame, curves: pd.DataFrame, trial_id: str, vocab: int) -> float:
    """The documented objective of a trial that missed its target, computed here from the files.

    README / search_state.objective: planned_flops x (best_loss / target) ** 10, planned_flops the
    larger of the trial's and the reference run's whole planned budget (and of a completed
    trial's own total, SearchState.objective_of), best_loss the trial's lowest finite held-out
    loss (ln V when there is none).
    """
    from progtune.budget import planned_flops

    def planned(row: pd.Series) -> float:
        flat = {k: plain(row[k]) for k in KNOB_TYPES if plain(row[k]) is not None}
        return planned_flops(from_flat(flat), vocab)

    row = trials[trials["trial_id"] == trial_id].iloc[0]
    ref = trials[trials["role"] == "reference"].iloc[0]
    losses = [plain(v) for v in curves[curves["trial_id"] == trial_id]["eval_loss"]]
    finite = [v for v in losses if v is not None and math.isfinite(v)]
    best = min(finite) if finite else math.log(vocab)
    budget = max(planned(row), planned(ref))
    if row["status"] == "completed":
        budget = max(budget, float(row["total_flops"]))
    return budget * max(best / float(row["target_loss"]), 1.0) ** 10


def prepared_vocab_size(tmp: Path) -> int:
    """The vocabulary of the `tiny` tokens the searches in `tmp` used (read from their cache)."""
    from progtune.data import prepare_data

    cfg = resolve("tiny", overrides={"data.cache_dir": str(tmp / "cache")})
    return prepare_data(cfg.data).vocab_size
