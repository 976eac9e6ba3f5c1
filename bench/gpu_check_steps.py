"""The Python steps of bench/gpu_check.sh: the engine's GPU tests and a `progtune train`, each with
Ray and Optuna unimportable (as on a GPU machine that has neither), and the one results file.

    python bench/gpu_check_steps.py tests JUNIT.xml TEST_FILE ...
    python bench/gpu_check_steps.py train PROGTUNE_TRAIN_ARGS ...
    python bench/gpu_check_steps.py merge --work DIR --dest FILE --mode gpu|tiny STEP=RC ...

`merge` reads what the steps left in DIR (tests.xml, throughput.json, the train run's folder
run/ and each step's log STEP.log) and writes one JSON file atomically; it exits 1 when a step
failed, 0 when all passed.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NOT_ON_THE_DEVICE = ("ray", "optuna")  # the GPU machine has neither; the engine needs neither
NOT_FOR_TRAINING = (*NOT_ON_THE_DEVICE, "pandas")  # the training loop's promise (design.md)
LOG_TAIL_CHARS = 2000  # of a failed step's output, kept in the results file


class _AbsentLoader(importlib.abc.Loader):
    """Fails every import it is asked for, as a package that is not installed does."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        raise ModuleNotFoundError(f"No module named {spec.name!r} (blocked)", name=spec.name)

    def exec_module(self, module: object) -> None:  # never reached: create_module raises
        raise NotImplementedError


class AbsentPackages(importlib.abc.MetaPathFinder):
    """An import finder, first in sys.meta_path, that answers for the blocked top-level names.

    It gives a spec whose loader raises ModuleNotFoundError rather than raising in find_spec, so
    `importlib.util.find_spec` probes (transformers' availability checks) do not crash.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = frozenset(names)

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> Any:
        if fullname.partition(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(fullname, _AbsentLoader())
        return None


def block_imports(names: tuple[str, ...]) -> AbsentPackages:
    """Make `import NAME` (and its submodules) raise ModuleNotFoundError in this process, as on
    a machine without them, whether they are installed here or not; returns the finder."""
    for loaded in [m for m in sys.modules if m.partition(".")[0] in names]:
        del sys.modules[loaded]
    finder = AbsentPackages(names)
    sys.meta_path.insert(0, finder)
    return finder


def run_tests(junit: str, files: list[str]) -> int:
    """pytest -m gpu on `files`, Ray and Optuna blocked; pytest's exit code."""
    block_imports(NOT_ON_THE_DEVICE)
    import pytest

    return int(pytest.main(["-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={junit}", *files]))


def run_train(train_args: list[str]) -> int:
    """`progtune train ARGS` with Ray, Optuna and pandas blocked; its exit code."""
    block_imports(NOT_FOR_TRAINING)
    from progtune.cli import main

    return main(["train", *train_args])


# ---------------------------------------------------------------------------- the results file
def tests_summary(junit: Path) -> dict[str, Any]:
    """Counts and failed test ids from pytest's JUnit XML; {"error": ...} when it is missing."""
    if not junit.is_file():
        return {"error": f"no {junit.name}: pytest did not get to write it"}
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {"error": f"{junit.name} holds no testsuite"}
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed": failed, "wall_s": float(suite.get("time", 0.0))}


def train_summary(run_dir: Path) -> dict[str, Any]:
    """The train run's one trial row (trials.parquet, read with pyarrow) and its speed."""
    trials = run_dir / "trials.parquet"
    if not trials.is_file():
        return {"error": f"no {trials.name}: the run did not finish"}
    import pyarrow.parquet as pq

    row = pq.read_table(trials).to_pylist()[0]
    keep = (
        "status", "final_eval_loss", "steps", "total_tokens", "total_flops", "total_wall_s",
        "eval_wall_s", "checkpoint_wall_s", "device", "precision", "config_hash",
        "model.arch", "budget.batch_size", "budget.grad_accum", "data.vocab_size",
    )  # fmt: skip
    out = {k: row.get(k) for k in keep}
    wall = row.get("total_wall_s") or 0.0
    out["tokens_per_s"] = row["total_tokens"] / wall if wall > 0 else None
    out["flops_per_s"] = row["total_flops"] / wall if wall > 0 else None
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _log_tail(work: Path, step: str) -> str:
    try:
        return (work / f"{step}.log").read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError:
        return ""


def step_ok(step: str, rc: int, part: dict[str, Any] | None) -> bool:
    """A step passed: exit 0 and its figures there (tests: none failed; train: completed with a
    finite loss)."""
    if rc != 0 or not part or "error" in part:
        return False
    if step == "tests":
        return part["failures"] == 0 and part["errors"] == 0
    if step == "train":
        loss = part.get("final_eval_loss")
        return part.get("status") == "completed" and loss is not None and math.isfinite(loss)
    return part.get("eager") is not None  # throughput


def results(work: Path, mode: str, rcs: dict[str, int]) -> dict[str, Any]:
    """The results file's content from the steps' leftovers in `work`."""
    parts: dict[str, dict[str, Any] | None] = {
        "tests": tests_summary(work / "tests.xml"),
        "throughput": _read_json(work / "throughput.json"),
        "train": train_summary(work / "run"),
    }
    steps: dict[str, Any] = {}
    for step, part in parts.items():
        rc = rcs.get(step, -1)  # -1: the step never ran
        ok = step_ok(step, rc, part)
        steps[step] = {"rc": rc, "ok": ok, **({} if ok else {"log_tail": _log_tail(work, step)})}
    device = (parts["throughput"] or {}).get("device")
    return {"mode": mode, "device": device, "ok": all(s["ok"] for s in steps.values()),
            "steps": steps, **parts}  # fmt: skip


def merge(args: argparse.Namespace) -> int:
    rcs = {}
    for item in args.rc:
        step, _, rc = item.partition("=")
        rcs[step] = int(rc)
    out = results(Path(args.work), args.mode, rcs)
    out["wall_s"] = args.wall_s
    sys.path.insert(0, str(ROOT))
    from progtune.atomic import write_text_atomic

    dest = Path(args.dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(dest, json.dumps(out, indent=2) + "\n")
    failed = [s for s, v in out["steps"].items() if not v["ok"]]
    print(f"gpu_check: {'all steps passed' if not failed else 'FAILED: ' + ', '.join(failed)}")
    print(f"results: {dest}")
    return 0 if not failed else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tests"]:
        return run_tests(argv[1], argv[2:])
    if argv[:1] == ["train"]:
        return run_train(argv[1:])
    p = argparse.ArgumentParser(prog="gpu_check_steps.py merge")
    p.add_argument("--work", required=True)
    p.add_argument("--dest", required=True)
    p.add_argument("--mode", required=True, choices=("gpu", "tiny"))
    p.add_argument("--wall-s", type=float, default=None)
    p.add_argument("rc", nargs="*", metavar="STEP=RC")
    return merge(p.parse_args(argv[1:] if argv[:1] == ["merge"] else argv))


if __name__ == "__main__":
    sys.exit(main())
