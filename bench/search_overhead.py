"""Search overhead: how much of each trial slot is training, trial start-up, idle slots.

    python bench/search_overhead.py [--preset cpu-small] [--num-samples 8] [--space apollo]
                                    [--skip-threads] [--storage DIR] [KEY=VALUE ...]

Runs real `progtune search` processes (local Ray on 127.0.0.1) and reads their Parquet:
1. the default search: share of trial-slot wall time inside training (goal >= 0.90), in
   evaluation and checkpoints; trial start-up (slot time not spent training, evaluating or
   checkpointing); slot time idle while the reference run was the only work;
2. 1 trial x 2 threads vs 2 trials x 1 thread on the same trials: search wall time ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_search(storage: Path, name: str, args: list[str]) -> float:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "progtune.cli", "search", "--storage", str(storage),
           "--name", name, *args]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"search failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return time.perf_counter() - start


def shares(storage: Path, name: str, wall: float, slots: int) -> dict[str, float]:
    from progtune.results import read_trials

    t = read_trials(storage / name / "trials.parquet")
    slot_time = slots * wall
    busy = t["trial_wall_s"].sum()
    inside = (t["total_wall_s"] + t["eval_wall_s"] + t["checkpoint_wall_s"]).sum()
    startup = t["trial_wall_s"] - t["total_wall_s"] - t["eval_wall_s"] - t["checkpoint_wall_s"]
    return {
        "search_wall_s": wall,
        "trials": float(len(t)),
        "train_share_of_slot_time": t["total_wall_s"].sum() / slot_time,
        "train_share_of_trial_time": t["total_wall_s"].sum() / busy,
        "eval_share_of_trial_time": t["eval_wall_s"].sum() / busy,
        "checkpoint_share_of_trial_time": t["checkpoint_wall_s"].sum() / busy,
        "startup_s_per_trial": float(startup.mean()),
        "idle_share_of_slot_time": max(0.0, 1 - busy / slot_time),
        "inside_run_share_of_trial_time": inside / busy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--space", default="apollo")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--skip-threads", action="store_true", help="skip part 2")
    parser.add_argument(
        "--threads-tokens",
        type=int,
        default=200_000,
        help="budget.tokens of part 2's runs (default 200000)",
    )
    parser.add_argument(
        "--storage",
        default="",
        help="keep the searches in this folder (default: a temporary one, removed at the end); "
        "bench/apollo_vs_scratch.py --searched reads the default search's best configuration",
    )
    parser.add_argument("overrides", nargs="*")
    a = parser.parse_args()
    slots = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(a.storage or tmp)
        storage.mkdir(parents=True, exist_ok=True)
        common = ["--preset", a.preset, "--space", a.space, *a.overrides]
        wall = run_search(storage, "default", [*common, "--num-samples", str(a.num_samples)])
        print(
            f"1. default search ({a.space}, {a.preset}, {a.num_samples} trials + reference, "
            f"{slots} slots of 1 CPU):"
        )
        for key, value in shares(storage, "default", wall, slots).items():
            print(f"   {key}: {value:.3f}")
        if a.skip_threads or slots < 2:
            return
        fixed = [
            *common,
            "--num-samples",
            "4",
            "--search-seed",
            "7",
            f"budget.tokens={a.threads_tokens}",
        ]
        one = run_search(storage, "t1", [*fixed, "--cpus-per-trial", "1"])
        two = run_search(storage, "t2", [*fixed, "--cpus-per-trial", "2"])
        print(
            f"2. same 4 trials + reference: 2 trials x 1 thread {one:.0f}s, 1 trial x 2 threads "
            f"{two:.0f}s, ratio (2x1 / 1x2): {one / two:.3f}"
        )


if __name__ == "__main__":
    main()
