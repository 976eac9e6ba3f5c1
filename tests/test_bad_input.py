"""Bad input is refused up front (issue 5): one line naming the problem, exit 2, nothing written.

Each case runs the real CLI (`python -m progtune.cli ...`) in a subprocess and checks: exit code
2, exactly one non-empty stderr line that names the problem, no traceback, nothing written under
the case's folder (a before/after snapshot; the token cache is exempt), quick, and no Ray started -
a `sitecustomize` on PYTHONPATH records at exit whether `ray` was ever imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

QUICK_S = 20.0  # no Ray, no training: a bad input is refused within a few seconds

# Records whether the CLI process ever imported ray (no import, no Ray started).
_PROBE = textwrap.dedent(
    """
    import atexit, os, sys

    def _record():
        path = os.environ.get("PT_RAY_PROBE")
        if path:
            with open(path, "w") as f:
                f.write("ray" if "ray" in sys.modules else "no-ray")

    atexit.register(_record)
    if os.environ.get("PT_HIDE_SCIPY"):  # as if scipy were not installed
        sys.modules["scipy"] = None
    """
)

T = ["train", "--preset", "tiny", "--out", "{tmp}/out"]
S = ["search", "--preset", "tiny", "--num-samples", "1", "--storage", "{tmp}/res", "--name", "n"]
R = ["report", "--out", "{tmp}/report"]


CASES = [
    # ---- config: KEY=VALUE overrides
    pytest.param([*S, "lr.pek=1"], "unknown config key 'lr.pek'", id="key-unknown"),
    pytest.param([*T, "lr.pek=1"], "unknown config key 'lr.pek'", id="train-key-unknown"),
    pytest.param(
        [*S, "model.n_layers=two"], "model.n_layers must be an integer", id="key-type-int"
    ),
    pytest.param([*S, "lr.peak=fast"], "lr.peak must be a number", id="key-type-float"),
    pytest.param([*S, "data.allow_download=maybe"], "must be true or false", id="key-type-bool"),
    pytest.param([*S, "lr.peak"], "expected KEY=VALUE", id="key-without-value"),
    pytest.param([*T, "budget.tokens=0"], "budget.tokens: must be > 0", id="train-budget-zero"),
    pytest.param([*S, "budget.tokens=-16384"], "budget.tokens: must be > 0", id="budget-negative"),
    pytest.param([*S, "stages.boundaries=[1.5]"], "must lie in (0, 1)", id="boundary-above-1"),
    pytest.param([*S, "stages.boundaries=[0]"], "must lie in (0, 1)", id="boundary-zero"),
    pytest.param(
        [*S, "model.n_layers=4", "stages.unique_layers=[1,2,4]", "stages.boundaries=[0.6,0.3]"],
        "stages.boundaries: must be strictly increasing",
        id="boundaries-decreasing",
    ),
    pytest.param(
        [*S, "stages.boundaries=[0.3,0.6]"], "stages.boundaries: needs 1 value", id="boundary-count"
    ),
    pytest.param(
        [*S, "model.n_layers=4", "stages.unique_layers=[3,2,4]", "stages.boundaries=[0.3,0.6]"],
        "stages.unique_layers: must be strictly increasing",
        id="unique-layers-decreasing",
    ),
    pytest.param(
        [*S, "stages.unique_layers=[1,3]"], "must end at model.n_layers=2", id="unique-layers-end"
    ),
    pytest.param([*S, "model.n_heads=3"], "3 heads do not divide model.d_model=32", id="heads"),
    pytest.param([*S, "data.vocab_size=100"], "data.vocab_size: must be >= 259", id="vocab-small"),
    pytest.param(
        [*T, "data.corpus={tmp}/small.jsonl", "data.vocab_size=5000"],
        "data.vocab_size=5000 but the corpus only supports",
        id="vocab-large-for-corpus",
    ),
    # ---- config files
    pytest.param(
        [*T, "--config", "{tmp}/unknown.yaml"], "unknown config key 'lr.pek'", id="yaml-key"
    ),
    pytest.param(
        [*S, "--config", "{tmp}/wrongtype.yaml"],
        "budget.tokens must be an integer",
        id="yaml-type",
    ),
    pytest.param([*S, "--config", "{tmp}/broken.yaml"], "is not valid YAML", id="yaml-syntax"),
    pytest.param([*S, "--config", "{tmp}/list.yaml"], "must hold a mapping", id="yaml-not-mapping"),
    pytest.param([*S, "--config", "{tmp}/nope.yaml"], "does not exist", id="yaml-missing"),
    # ---- corpora
    pytest.param([*T, "data.corpus={tmp}/nope.txt"], "does not exist", id="corpus-missing"),
    pytest.param([*T, "data.corpus={tmp}/empty.txt"], "holds no text", id="corpus-empty"),
    pytest.param([*T, "data.corpus={tmp}/blob.bin"], "is binary", id="corpus-binary"),
    pytest.param([*T, "data.corpus={tmp}/bad.jsonl"], "line 2 is not JSON", id="corpus-jsonl-bad"),
    pytest.param(
        [*T, "data.corpus={tmp}/notext.parquet"],
        "data.text_column='text' is not a column",
        id="corpus-parquet-no-text",
    ),
    pytest.param(
        [*T, "data.corpus={tmp}/corrupt.parquet"],
        "is not a readable Parquet file",
        id="corpus-parquet-corrupt",
    ),
    pytest.param([*S, "data.corpus={tmp}/nope.txt"], "does not exist", id="search-corpus-missing"),
    # ---- search-space files
    pytest.param(
        [*S, "--space", "{tmp}/nodefine.py"], "has no define(trial)", id="space-no-define"
    ),
    pytest.param(
        [*S, "--space", "{tmp}/syntax.py"], "has a syntax error at line", id="space-syntax"
    ),
    pytest.param([*S, "--space", "{tmp}/nope.py"], "does not exist", id="space-missing"),
    pytest.param(
        [*S, "--space", "{tmp}/unknown.py"],
        "returns unknown knob(s) 'lr.pek'",
        id="space-unknown-knob",
    ),
    pytest.param(
        [*S, "--space", "{tmp}/nondict.py"],
        "must return a dict",
        id="space-non-dict",
    ),
    pytest.param(
        [*S, "--space", "{tmp}/raises.py"],
        "define() raised ValueError: boom",
        id="space-raises",
    ),
    # ---- CLI misuse
    pytest.param([*S, "--bogus"], "unrecognized arguments: --bogus", id="search-unknown-flag"),
    pytest.param([*T, "--bogus"], "unrecognized arguments: --bogus", id="train-unknown-flag"),
    pytest.param([*S, "--resume", "--dry-run"], "cannot be combined", id="resume-with-dry-run"),
    pytest.param(
        [*S, "--sampler", "gp"],
        "--sampler gp needs scipy",
        id="sampler-gp-without-scipy",
    ),
    pytest.param(
        ["search", "--resume", "--storage", "{tmp}/res"],
        "--resume needs --name",
        id="resume-no-name",
    ),
    pytest.param(
        ["search", "--resume", "--name", "never-ran", "--storage", "{tmp}/res"],
        "no experiment 'never-ran'",
        id="resume-unknown-experiment",
    ),
    pytest.param(
        ["search", "--space", "smoke", "--preset", "tiny", "--storage", "{tmp}/old", "--name", "e"],
        "experiment 'e' already exists",
        id="search-existing-experiment",
    ),
    pytest.param([*T, "--resume"], "nothing to resume", id="train-resume-nothing"),
    pytest.param(
        ["train", "--preset", "tiny", "--out", "{tmp}/oldrun"],
        "already holds a run",
        id="train-existing-out",
    ),
    pytest.param(
        [*S[:-4], "--storage", "{tmp}/small.txt/sub", "--name", "n"],
        "--storage {tmp}/small.txt/sub is not writable",
        id="storage-under-a-file",
    ),
    # ---- result folders (progtune report)
    pytest.param([*R, "{tmp}/nope"], "no results folder at", id="report-missing-folder"),
    pytest.param([*R, "{tmp}/emptyexp"], "no results in", id="report-empty-folder"),
    pytest.param([*R, "{tmp}/corruptexp"], "is not a readable Parquet file", id="report-corrupt"),
    pytest.param([*R, "{tmp}/v999exp"], "has results schema version 999", id="report-version"),
    pytest.param([*R, "{tmp}/foreignexp"], "is not a progtune results file", id="report-foreign"),
]


def _make_inputs(tmp: Path) -> None:
    """Every file the cases refer to (cheap; made fresh for each case)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from progtune.results import SCHEMA_KEY, curves_table, trials_table

    (tmp / "small.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 25)
    # 20 one-line documents (one per JSONL row), so the corpus has a validation split.
    with open(tmp / "small.jsonl", "w") as f:
        for i in range(20):
            f.write(json.dumps({"text": f"the quick brown fox {i} jumps over the lazy dog"}) + "\n")
    (tmp / "empty.txt").write_text("")
    (tmp / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    (tmp / "blob.bin").write_bytes(bytes(range(256)) * 8)
    pd.DataFrame({"body": ["some text", "more text"]}).to_parquet(tmp / "notext.parquet")
    (tmp / "corrupt.parquet").write_bytes(b"PAR1 this is not really parquet PAR1")
    (tmp / "unknown.yaml").write_text("lr:\n  pek: 1\n")
    (tmp / "wrongtype.yaml").write_text("budget:\n  tokens: lots\n")
    (tmp / "broken.yaml").write_text("lr: [1, 2\n")
    (tmp / "list.yaml").write_text("- lr.peak\n- 1\n")
    spaces = {
        "nodefine.py": "X = 1\n",
        "syntax.py": "def define(trial:\n",
        "unknown.py": "def define(trial):\n    return {'lr.pek': 1}\n",
        "nondict.py": "def define(trial):\n    return [1]\n",
        "raises.py": "def define(trial):\n    raise ValueError('boom')\n",
    }
    for name, body in spaces.items():
        (tmp / name).write_text(body)
    # An experiment that already exists (its settings file is all the check needs).
    (tmp / "old" / "e").mkdir(parents=True)
    (tmp / "old" / "e" / "search.json").write_text(json.dumps({"space_spec": "smoke"}))
    # A train output folder that already holds a run.
    (tmp / "oldrun").mkdir()
    (tmp / "oldrun" / "trials.parquet").write_bytes(b"")
    # Result folders: empty, corrupt Parquet, an unknown schema version, a foreign Parquet file.
    (tmp / "emptyexp").mkdir()
    (tmp / "corruptexp").mkdir()
    for name in ("trials.parquet", "curves.parquet"):
        (tmp / "corruptexp" / name).write_bytes(b"PAR1\x00\x01garbage")
    (tmp / "v999exp").mkdir()
    row = {"experiment": "x", "trial_id": "t", "role": "search", "status": "completed"}
    curve = {"experiment": "x", "trial_id": "t", "step": 0, "eval_loss": 5.0}
    for name, table in (("trials", trials_table([row])), ("curves", curves_table([curve]))):
        meta = {SCHEMA_KEY: b"999", b"progtune.kind": name.encode()}
        pq.write_table(table.replace_schema_metadata(meta), tmp / "v999exp" / f"{name}.parquet")
    (tmp / "foreignexp").mkdir()
    for name in ("trials", "curves"):
        pq.write_table(pa.table({"a": [1, 2]}), tmp / "foreignexp" / f"{name}.parquet")


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path below root (cache and probe exempt); files with their size and mtime."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not (Path(dirpath) == root and d in ("cache", "_probe"))]
        for name in dirs + files:
            p = Path(dirpath, name)
            st = p.lstat()
            # Folders: existence only (the --storage writability probe creates and removes a
            # file, which touches its folder's mtime but leaves nothing behind).
            out[str(p.relative_to(root))] = (
                ("dir",) if p.is_dir() else ("file", st.st_size, st.st_mtime_ns)
            )
    return out


@pytest.mark.parametrize(("argv", "fragment"), CASES)
def test_bad_input_is_refused_in_one_line(tmp_path, argv, fragment):
    _make_inputs(tmp_path)
    probe_dir = tmp_path / "_probe"
    probe_dir.mkdir()
    (probe_dir / "sitecustomize.py").write_text(_PROBE)
    probe = probe_dir / "ray.txt"
    env = {
        **os.environ,
        "PROGTUNE_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": os.pathsep.join([str(probe_dir), os.environ.get("PYTHONPATH", "")]),
        "PT_RAY_PROBE": str(probe),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("RAY_ADDRESS", None)
    if "gp" in argv:  # the gp case runs as if scipy were missing (make test installs it)
        env["PT_HIDE_SCIPY"] = "1"
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    fragment = fragment.replace("{tmp}", str(tmp_path))
    before = _snapshot(tmp_path)
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "progtune.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env=env,
    )
    took = time.monotonic() - t0
    shown = f"stdout:\n{out.stdout[-2000:]}\nstderr:\n{out.stderr[-2000:]}"
    assert out.returncode == 2, shown
    assert "Traceback" not in out.stderr + out.stdout, shown
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, shown
    assert fragment in lines[0], shown
    assert probe.read_text() == "no-ray", "ray was imported: " + shown
    after = _snapshot(tmp_path)
    # Nothing written; at most a new, empty storage folder (made by the --storage writability
    # check before the corpus is read).
    new = sorted(set(after) - set(before))
    assert all(after[p] == ("dir",) and not any((tmp_path / p).iterdir()) for p in new), new
    assert {p: after[p] for p in before} == before, "something was written: " + shown
    assert took < QUICK_S, f"took {took:.1f}s: " + shown
