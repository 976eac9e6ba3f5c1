"""Record a landscape of real training curves over the discretised apollo space, resumably.

    .venv/bin/python bench/landscape.py --preset cheap --out bench/landscape/stdlib-cheap --list
    .venv/bin/python bench/landscape.py --preset cheap --out bench/landscape/stdlib-cheap
    .venv/bin/python bench/landscape.py --preset cheap --corpus kjv --out bench/landscape/kjv-cheap

Every run is the product's own trainer (`progtune.train.train`, in this process, one torch
thread, under nice 19). Each finished run is written at once, atomically, as its own Parquet
part file `<config id>-s<seed>.parquet` (landscape_space.config_id) in `--out`: its curve rows
and one summary row (`row` column). Re-running the same command skips what is there, so a
stopped job - or a later session - continues where it stopped; `pd.read_parquet(out)` reads the
whole landscape. `--limit N` runs at most N more runs; `--list` prints the plan and its cost
(pending runs x the mean measured core-seconds of the runs already in `--out`). `_plan.json` in
`--out` pins the scale and corpus; continuing with other ones is refused. Plan and grid:
bench/landscape_space.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from landscape_space import (
    Point,
    base_config,
    config_id,
    landscape_plan,
    point_config,
    point_id,
)

from progtune.atomic import write_atomic, write_text_atomic
from progtune.config import Config, flatten, list_text
from progtune.config_parsing import parse_assignments
from progtune.errors import ProgtuneError, one_line_reason
from progtune.results import CURVE_FIELDS, trials_schema

DEFAULT_SEEDS = (1, 2)
_IDENTITY = [("config_id", pa.string()), ("label", pa.string()), ("row", pa.string())]
_SUMMARY = [
    ("status", pa.string()),  # completed | diverged | failed (error holds why)
    ("error", pa.string()),
    ("run_wall_s", pa.float64()),  # the whole run: set-up, training, evaluation
    ("run_cpu_s", pa.float64()),  # CPU seconds of the process meanwhile: the cost in core-seconds
    ("data_fingerprint", pa.string()),
    ("device", pa.string()),
    ("precision", pa.string()),
    ("git_sha", pa.string()),
    ("recorded_at", pa.string()),
]


def part_schema() -> pa.Schema:
    """One part file: identity, every knob (typed as in trials.parquet), curve columns, summary.

    Curve rows fill the curve columns; the summary row puts the run's totals in the same
    columns (step = steps, tokens/flops/wall_s = totals, eval_loss = final full-depth loss)."""
    knobs = [f for f in trials_schema() if f.name.split(".")[0] in _KNOB_SECTIONS]
    curve = [f for f in CURVE_FIELDS if f.name not in ("experiment", "trial_id")]
    return pa.schema(
        [pa.field(n, t) for n, t in _IDENTITY]
        + knobs
        + curve
        + [pa.field(n, t) for n, t in _SUMMARY]
    )


_KNOB_SECTIONS = {name.split(".")[0] for name in flatten(Config())}


def part_path(out: Path, cfg_id: str, seed: int) -> Path:
    """Where the run of config `cfg_id` on `seed` is (or will be) recorded."""
    return out / f"{cfg_id}-s{seed}.parquet"


def knob_row(cfg: Config) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, value in flatten(cfg).items():
        if isinstance(value, tuple):
            row[name], row[f"{name}_str"] = list(value), list_text(value)
        else:
            row[name] = value
    return row


def run_rows(
    cfg: Config, point: Point, cfg_id: str, data: Any, git_sha: str
) -> list[dict[str, Any]]:
    """Train `cfg` once; its curve rows and the summary row (a failure is a summary row too)."""
    from progtune.train import train

    head = {"config_id": cfg_id, "label": point.label, **knob_row(cfg)}
    t0, c0 = time.perf_counter(), time.process_time()
    summary: dict[str, Any] = {"row": "summary", "git_sha": git_sha}
    curve: list[dict[str, Any]] = []
    try:
        result = train(cfg, data=data)
    except (ProgtuneError, RuntimeError, ValueError) as exc:  # recorded, so a resume skips it
        summary |= {"status": "failed", "error": one_line_reason(exc)}
    else:
        curve = [{**head, "row": "curve", **row} for row in result.curve]
        summary |= {
            "status": result.status,
            "step": result.steps,
            "tokens": result.total_tokens,
            "flops": result.total_flops,
            "wall_s": result.total_wall_s,
            "eval_loss": result.final_eval_loss,
            "eval_wall_s": result.eval_wall_s,
            "checkpoint_wall_s": result.checkpoint_wall_s,
            "data_fingerprint": result.data_fingerprint,
            "device": result.device,
            "precision": result.precision,
        }
    summary |= {
        "run_wall_s": time.perf_counter() - t0,
        "run_cpu_s": time.process_time() - c0,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return [*curve, {**head, **summary}]


def write_part(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows -> one Parquet part file, atomically (a reader never sees half a run)."""
    schema = part_schema()
    columns = [pa.array([r.get(f.name) for r in rows], type=f.type) for f in schema]
    table = pa.Table.from_arrays(columns, schema=schema)
    write_atomic(path, lambda f: pq.write_table(table, f))


def planned_runs(base: Config, points: list[Point], seeds: Sequence[int]) -> list[tuple]:
    """(point, seed, config id) for every run of the plan, config-major (both seeds together)."""
    return [(p, s, point_id(base, p)) for p in points for s in seeds]


def record(
    base: Config,
    runs: list[tuple],
    out: Path,
    data: Any,
    limit: int | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Train every run of `runs` not yet in `out` (at most `limit`); return how many ran."""
    git_sha = _git_sha()
    done = 0
    for i, (point, seed, cfg_id) in enumerate(runs):
        path = part_path(out, cfg_id, seed)
        if path.exists():
            continue
        if limit is not None and done >= limit:
            break
        rows = run_rows(point_config(base, point, seed), point, cfg_id, data, git_sha)
        write_part(path, rows)
        done += 1
        s = rows[-1]
        log(
            f"[{i + 1}/{len(runs)}] {cfg_id} s{seed} {s['status']} final {s.get('eval_loss')} "
            f"{s['run_cpu_s']:.1f} core-s ({s['run_wall_s']:.1f} s wall)  {point.label}"
        )
    return done


def _git_sha() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def recorded_summaries(out: Path) -> list[dict[str, Any]]:
    """The summary rows of every part in `out` (pyarrow only: no pandas needed to resume)."""
    rows: list[dict[str, Any]] = []
    for path in sorted(out.glob("*.parquet")):
        table = pq.read_table(path, filters=[("row", "=", "summary")])
        rows += table.to_pylist()
    return rows


def _core_s(summary: dict[str, Any]) -> float:
    """A run's cost in core-seconds (its CPU time; wall time for parts recorded without it)."""
    return summary.get("run_cpu_s") or summary["run_wall_s"]


def cost_lines(runs: list[tuple], out: Path) -> list[str]:
    """The plan, run by run, and its cost: pending runs x the mean measured core-seconds."""
    done = {(r["config_id"], r["seed"]): r for r in recorded_summaries(out)}
    lines = []
    for i, (point, seed, cfg_id) in enumerate(runs):
        r = done.get((cfg_id, seed))
        state = f"{r['status']} {_core_s(r):.0f} core-s" if r else "pending"
        lines.append(f"{i + 1:4d} {cfg_id} s{seed}  {state:21s} {point.label}")
    walls = [_core_s(r) for r in done.values()]
    pending = sum((cfg_id, seed) not in done for _, seed, cfg_id in runs)
    lines.append(f"{len(runs)} runs planned, {len(runs) - pending} recorded, {pending} pending")
    if walls:
        mean = sum(walls) / len(walls)
        lines.append(
            f"cost: {pending} pending x {mean:.1f} core-s measured (mean of {len(walls)}) = "
            f"{pending * mean / 3600:.2f} core-hours at 1 thread; "
            f"recorded so far {sum(walls) / 3600:.2f} core-hours"
        )
    else:
        lines.append("cost: no run of this scale recorded yet in --out (run --limit 1 to measure)")
    return lines


def check_plan_file(out: Path, base: Config, args: dict[str, Any]) -> None:
    """Pin the scale and corpus of `out` in _plan.json; refuse to continue with other ones."""
    plan = {"base_id": config_id(base), **args}
    path = out / "_plan.json"  # "_": pd.read_parquet(out) skips it
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("base_id") != plan["base_id"]:
            raise SystemExit(
                f"error: {out} holds a landscape of another scale or corpus ({old}); "
                "pass the same --preset, --corpus and overrides, or another --out"
            )
    write_text_atomic(path, json.dumps(plan, indent=1, sort_keys=True) + "\n")


def resolve_corpus(corpus: str) -> str:
    """`kjv` -> the exported English corpus folder (bench/prose_corpus.py); else as given."""
    if corpus == "kjv":
        from prose_corpus import ensure_kjv

        return str(ensure_kjv())
    return corpus


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder of part files (resumed)")
    p.add_argument("--preset", default="cheap", help="a product preset or a bench scale (cheap)")
    p.add_argument("--corpus", default="stdlib", help="stdlib, kjv, or a folder/glob (data.corpus)")
    p.add_argument("--grid", type=int, default=160, help="grid points after scratch and starts")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the grid sample")
    p.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), help="training seeds")
    p.add_argument("--limit", type=int, default=None, help="run at most N more runs")
    p.add_argument("--list", action="store_true", help="print the plan and its cost, run nothing")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = parse_assignments(args.overrides) | {"data.corpus": resolve_corpus(args.corpus)}
    base = base_config(args.preset, overrides)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    runs = planned_runs(base, landscape_plan(base, args.grid, args.sample_seed), seeds)
    if args.list:
        print("\n".join(cost_lines(runs, args.out)))
        return 0
    os.nice(19 - os.nice(0))  # background work: the 2 cores are shared with interactive use
    pinned = {"preset": args.preset, "corpus": args.corpus, "precision": base.runtime.precision}
    check_plan_file(args.out, base, pinned)
    from progtune.data import prepare_data

    data = prepare_data(base.data)
    n = record(base, runs, args.out, data, args.limit, log=lambda s: print(s, flush=True))
    print(f"recorded {n} runs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
