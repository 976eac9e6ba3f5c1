"""bench/gpu_check.sh in its tiny mode on a CPU: every step runs and its one results file says so;
and the verdicts bench/gpu_check_steps.py draws from what failed steps leave behind."""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench_scripts import load_bench

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
steps = load_bench("gpu_check_steps")


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One run of `bash bench/gpu_check.sh --tiny`: its output, results file and leftovers."""
    tmp = tmp_path_factory.mktemp("gpu-check")
    (tmp / "out").mkdir()
    (tmp / "scratch").mkdir()
    env = {
        **os.environ,
        "OUT": str(tmp / "out"),
        "PYTHON": sys.executable,
        "TMPDIR": str(tmp / "scratch"),  # the script's work folder: removed at its end
    }
    env.pop("PYTHONPATH", None)  # the script sets its own: the source tree
    out = subprocess.run(
        ["bash", str(SCRIPT), "--tiny"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp,  # the script finds the repository itself
        env=env,
    )
    files = sorted(p.name for p in (tmp / "out").iterdir())
    path = tmp / "out" / "gpu_check.json"
    result = steps.json.loads(path.read_text()) if path.is_file() else {}
    left = sorted(p.name for p in (tmp / "scratch").iterdir())
    return {"proc": out, "files": files, "result": result, "left": left}


@pytest.mark.slow  # one ~15 CPU-second run of the script, shared
def test_tiny_check_passes_every_step_into_one_file(tiny_check: dict) -> None:
    proc, result = tiny_check["proc"], tiny_check["result"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert tiny_check["files"] == ["gpu_check.json"] and tiny_check["left"] == []
    assert result["mode"] == "tiny" and result["ok"] is True
    assert result["steps"] == {s: {"rc": 0, "ok": True} for s in ("tests", "throughput", "train")}
    assert result["device"]["type"] == "cpu" and result["wall_s"] > 0
    assert "gpu_check: all steps passed" in proc.stdout


@pytest.mark.slow  # one ~15 CPU-second run of the script, shared
def test_tiny_check_collected_the_gpu_tests(tiny_check: dict) -> None:
    tests = tiny_check["result"]["tests"]
    # tests/test_train.py's CUDA run per architecture at least; all skipped without CUDA
    assert tests["tests"] >= 3 and tests["failures"] == 0 and tests["errors"] == 0
    assert tests["skipped"] == tests["tests"] and tests["failed"] == []


@pytest.mark.slow  # one ~15 CPU-second run of the script, shared
def test_tiny_check_throughput_against_the_measured_matmul(tiny_check: dict) -> None:
    t = tiny_check["result"]["throughput"]
    assert t["preset"] == "tiny" and t["compiled"] == {"skipped": "--no-compile"}
    matmul = t["matmul"]
    assert matmul["size"] == 256 and matmul["steps"] == 10 and matmul["flops_per_s"] > 0
    assert matmul["of_peak"] is None  # no datasheet peak for a CPU
    figures = [t["eager"], *t["depths"]]
    assert [row["depth"] for row in t["depths"]] == [1, 2]
    for fig in figures:
        expected = fig["achieved_flops_per_s"] / matmul["flops_per_s"]
        assert fig["mfu_vs_matmul"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow  # one ~15 CPU-second run of the script, shared
def test_tiny_check_trained_without_ray_optuna_pandas(tiny_check: dict) -> None:
    # The step blocks those imports: a training path that needed one would have failed.
    train = tiny_check["result"]["train"]
    assert train["status"] == "completed" and math.isfinite(train["final_eval_loss"])
    assert train["total_tokens"] == 4096 and train["model.arch"] == "gpt2"
    assert train["tokens_per_s"] == pytest.approx(train["total_tokens"] / train["total_wall_s"])


# ---------------------------------------------------------------------------- verdicts
def test_blocked_package_is_absent_though_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "h4_installed_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "sub.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("h4_installed_pkg.sub")  # installed and already imported
    finder = steps.block_imports(("h4_installed_pkg",))
    try:
        for name in ("h4_installed_pkg", "h4_installed_pkg.sub"):
            with pytest.raises(ModuleNotFoundError, match="blocked"):
                importlib.import_module(name)
        # availability probes (transformers' find_spec checks) get an answer, not an error
        assert importlib.util.find_spec("h4_installed_pkg") is not None
        importlib.import_module("json")  # others import as before
    finally:
        sys.meta_path.remove(finder)
        for name in [m for m in sys.modules if m.startswith("h4_installed_pkg")]:
            del sys.modules[name]


JUNIT_ONE_FAILURE = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest"
 errors="0" failures="1" skipped="1" tests="3" time="1.5"><testcase classname="tests.test_x"
 name="test_a" time="0.1"><failure message="boom">boom</failure></testcase><testcase
 classname="tests.test_x" name="test_b" time="0.1"/><testcase classname="tests.test_x"
 name="test_c" time="0.0"><skipped message="needs a CUDA device"/></testcase></testsuite>
</testsuites>"""


def test_merge_names_the_failed_steps(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "tests.xml").write_text(JUNIT_ONE_FAILURE)
    (work / "train.log").write_text("x" * 5000 + "the last line")
    dest = tmp_path / "out" / "gpu_check.json"
    args = ["merge", "--work", str(work), "--dest", str(dest), "--mode", "gpu"]
    rc = steps.main([*args, "tests=1", "throughput=0", "train=1"])
    assert rc == 1
    assert "FAILED: tests, throughput, train" in capsys.readouterr().out
    result = steps.json.loads(dest.read_text())
    assert result["ok"] is False and result["throughput"] is None  # no throughput.json
    assert result["tests"]["failed"] == ["tests.test_x::test_a"]
    assert (result["tests"]["passed"], result["tests"]["skipped"]) == (1, 1)
    assert result["train"] == {"error": "no trials.parquet: the run did not finish"}
    tail = result["steps"]["train"]["log_tail"]
    assert len(tail) == steps.LOG_TAIL_CHARS and tail.endswith("the last line")
    assert [p.name for p in dest.parent.iterdir()] == ["gpu_check.json"]  # written atomically


@pytest.mark.parametrize(
    ("step", "rc", "part", "ok"),
    [
        ("tests", 0, {"failures": 0, "errors": 0}, True),
        ("tests", 0, {"failures": 0, "errors": 1}, False),
        ("tests", 5, {"failures": 0, "errors": 0}, False),  # pytest: no test collected
        ("train", 0, {"status": "completed", "final_eval_loss": 3.2}, True),
        ("train", 0, {"status": "completed", "final_eval_loss": float("nan")}, False),
        ("train", 1, {"status": "diverged", "final_eval_loss": None}, False),
        ("throughput", 0, {"eager": {"steps": 3}}, True),
        ("throughput", 1, {"eager": None}, False),
        ("throughput", 124, None, False),  # timed out before writing its JSON
    ],
)
def test_step_verdicts(step: str, rc: int, part: dict | None, ok: bool) -> None:
    assert steps.step_ok(step, rc, part) is ok
