"""Readers polling a results file while progtune rewrites it: which readers see a torn file?

progtune replaces trials.parquet / curves.parquet atomically (temp file, fsync, os.replace) every
time a trial reports. A thread here rewrites a curves file with progtune's writer as fast as it
can (one more row each time) while the main thread reads it in three ways, for the same time each:

- `progtune.results.read_curves(path)`: opens the file once;
- `pd.read_parquet(open(path, "rb"))`: one open file handed to pandas;
- `pd.read_parquet(path)`: pandas 3.1 hands the local path to pyarrow, whose dataset reader opens
  it twice (footer for the schema, then the data with that footer's offsets) - a rename in between
  mixes two versions.

Prints, per reader, reads, failed reads and reads whose rows are not a complete version, and the
failure ratio against the one-open reader measured in the same run.

    python bench/parquet_reader_race.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

from progtune.results import read_curves, read_parquet_one_open, write_curves


def _rows(n: int) -> list[dict]:
    return [
        {"experiment": "race", "trial_id": f"t{i % 7}", "step": i, "tokens": 64 * i,
         "flops": 1.5e9 * i, "wall_s": 0.1 * i, "stage": 0, "unique_layers": 1,
         "mean_depth": 1.0, "lr": 1e-3, "train_loss": 5.0, "eval_loss": 5.0 - i * 1e-4}
        for i in range(n)
    ]  # fmt: skip


def _complete(df: pd.DataFrame) -> bool:
    """Rows 0..n-1 in order: exactly one written version."""
    return [int(s) for s in df["step"]] == list(range(len(df)))


def race(seconds: float) -> dict[str, tuple[int, int, int]]:
    readers = {
        "progtune.results.read_curves(path)": read_curves,
        'pd.read_parquet(open(path, "rb"))': read_parquet_one_open,
        "pd.read_parquet(path)": pd.read_parquet,
    }
    out = {}
    with tempfile.TemporaryDirectory(prefix="pt-race-") as tmp:
        path = Path(tmp) / "curves.parquet"
        write_curves(_rows(1), path)
        stop = threading.Event()

        def writer() -> None:
            n = 1
            while not stop.is_set():
                n += 1
                write_curves(_rows(n), path)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        try:
            for name, read in readers.items():
                reads = failed = torn = 0
                end = time.perf_counter() + seconds
                while time.perf_counter() < end:
                    reads += 1
                    try:
                        df = read(path)
                    except Exception:  # counting every failure is the point
                        failed += 1
                        continue
                    torn += not _complete(df)
                out[name] = (reads, failed, torn)
        finally:
            stop.set()
            thread.join()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="reading time per reader")
    args = parser.parse_args(argv)
    results = race(args.seconds)
    base = results['pd.read_parquet(open(path, "rb"))']
    base_rate = (base[1] + base[2]) / max(base[0], 1)
    print(f"{'reader':40s} {'reads':>7s} {'failed':>7s} {'torn':>5s} {'bad share':>9s}")
    for name, (reads, failed, torn) in results.items():
        rate = (failed + torn) / max(reads, 1)
        print(f"{name:40s} {reads:7d} {failed:7d} {torn:5d} {rate:9.3f}")
    worst = max((f + t) / max(r, 1) for r, f, t in results.values())
    print(f"worst bad share {worst:.3f} vs one-open pandas {base_rate:.3f}")


if __name__ == "__main__":
    main()
