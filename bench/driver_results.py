"""The search driver's results path at cluster scale: time per report as the stored rows grow.

No training and no Ray: 500 trials x 200 evaluations go through `SearchState` exactly as the Tune
callback feeds it (`start`, `add_row` per evaluation, `finish`, `write`), with `--concurrent`
trials running at once (round robin, a finished trial's slot taken by the next one). Between the
measurements every report calls the throttled `write()` like the callback does; inside a
measurement window every report writes (`min_interval_s=0`), so the figure is the full cost of a
report that writes - what the 5 s throttle bounds, and what grew with the square of the search
when each write rewrote both whole files.

Prints the mean time per report over `--window` reports after 1 000 stored rows and over the
last `--window` reports (up to 100 000 rows), and their ratio (goal <= 1.5); a second column adds
the trial starts and finishes in those windows (their writes rewrite trials.parquet), still per
row report. To measure an older commit's code path, extract its package and point the bench at
it:

    .venv/bin/python bench/driver_results.py
    git archive 4926cc3 progtune | tar -x -C /tmp/before
    .venv/bin/python bench/driver_results.py --progtune-from /tmp/before --window 3 --quiet-between
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _row(step: int, evals: int) -> dict:
    """One curve row; the loss falls smoothly so targets get reached mid-run."""
    frac = step / evals
    return {
        "step": step * 10, "tokens": step * 20480, "flops": 1e12 * step,
        "wall_s": 0.5 * step, "stage": min(int(frac * 3), 2),
        "unique_layers": [1, 2, 4][min(int(frac * 3), 2)], "mean_depth": 2.0, "lr": 1e-3,
        "train_loss": 6.0 - 3.0 * frac, "eval_loss": 6.0 - 3.0 * math.sqrt(frac),
        "eval_wall_s": 0.01 * step, "checkpoint_wall_s": 0.0,
    }  # fmt: skip


def reports(trials: int, evals: int, concurrent: int) -> Iterator[tuple[str, str, int]]:
    """(event, trial_id, step) in the order a cluster produces them: start, row, finish."""
    waiting = [f"t{i:05d}" for i in range(trials)]
    running: dict[str, int] = {}
    while waiting or running:
        while waiting and len(running) < concurrent:
            tid = waiting.pop(0)
            running[tid] = 0
            yield "start", tid, 0
        for tid in list(running):
            running[tid] += 1
            yield "row", tid, running[tid]
            if running[tid] == evals:
                del running[tid]
                yield "finish", tid, evals


def feed(
    storage: Path, trials: int, evals: int, concurrent: int, window: int, quiet: bool = False
) -> dict:
    """Feed every report; seconds per writing report in the two windows. `quiet`: no writes
    between the windows (one untimed write before each), for code paths too slow to feed whole."""
    from progtune.config import preset
    from progtune.search_state import SearchState

    cfg = preset("tiny")
    state = SearchState(str(storage / "bench"), "bench", 8192, None)
    state.start("reference", "reference", cfg, 1e15, dt.datetime.now(dt.UTC))
    for step in range(1, evals + 1):
        state.add_row("reference", _row(step, evals))
    state.finish("reference", "completed", {"final_eval_loss": 3.2, "total_flops": 2e14})
    stored, total = evals, evals * (trials + 1)
    windows = {"early": (1000, 1000 + window), "late": (total - window, total)}
    spent = {name: [0.0, 0.0] for name in windows}  # [row reports only, every callback event]
    for event, tid, step in reports(trials, evals, concurrent):
        now = time.perf_counter()
        stored += event == "row"
        inside = [n for n, (lo, hi) in windows.items() if lo < stored <= hi]
        if quiet and not inside:
            _apply(state, cfg, event, tid, _row(step, evals))
            if any(stored == lo for lo, _ in windows.values()):
                state.write(force=True)  # untimed: the store catches up before the window
            continue
        if event == "start":
            state.start(tid, "search", cfg, 1e15, dt.datetime.now(dt.UTC))
            state.write()
        elif event == "finish":  # the final report, then on_trial_complete forces a write
            state.finish(tid, "completed", {"final_eval_loss": 3.0, "total_flops": 2e14})
            state.write()
            state.write(force=True)
        else:
            state.add_row(tid, _row(step, evals))
            state.write(min_interval_s=0.0) if inside else state.write()
        for name in inside:
            spent[name][1] += time.perf_counter() - now
            if event == "row":
                spent[name][0] += time.perf_counter() - now
    state.write(force=True)
    return {"stored_rows": stored, **{n: [t / window for t in spent[n]] for n in windows}}


def _apply(state: Any, cfg: Any, event: str, tid: str, row: dict) -> None:
    """One event into the state, no write."""
    if event == "start":
        state.start(tid, "search", cfg, 1e15, dt.datetime.now(dt.UTC))
    elif event == "finish":
        state.finish(tid, "completed", {"final_eval_loss": 3.0, "total_flops": 2e14})
    else:
        state.add_row(tid, row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--evals", type=int, default=200, help="evaluations per trial")
    parser.add_argument("--concurrent", type=int, default=32, help="trials running at once")
    parser.add_argument("--window", type=int, default=100, help="writing reports per window")
    parser.add_argument("--storage", help="folder for the experiment (default: a temp folder)")
    parser.add_argument("--progtune-from", help="a folder holding another version's progtune/")
    parser.add_argument(
        "--quiet-between", action="store_true", help="no writes between the windows (old code)"
    )
    args = parser.parse_args()
    if args.progtune_from:
        sys.path.insert(0, args.progtune_from)
    import progtune

    print(f"progtune from {Path(progtune.__file__).parent}")
    with tempfile.TemporaryDirectory(prefix="pt-driver-", dir=args.storage) as tmp:
        t0 = time.perf_counter()
        out = feed(
            Path(tmp), args.trials, args.evals, args.concurrent, args.window, args.quiet_between
        )
        wall = time.perf_counter() - t0
    (early, early_all), (late, late_all), stored = out["early"], out["late"], out["stored_rows"]
    print(
        f"{args.trials} trials x {args.evals} evaluations ({stored} rows), "
        f"{args.concurrent} at once, whole feed {wall:.1f} s"
    )
    print("time per writing report (ms):   row reports   + starts and finishes")
    for label, (rows_only, every) in (("1,000", out["early"]), (f"{stored:,}", out["late"])):
        print(f"  at ~{label:>7} stored rows   {rows_only * 1e3:10.2f}   {every * 1e3:12.2f}")
    print(
        f"ratio late / early: {late / early:.2f} (goal <= 1.5); "
        f"with starts and finishes {late_all / early_all:.2f}"
    )


if __name__ == "__main__":
    main()
