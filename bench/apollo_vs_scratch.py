"""Apollo vs scratch at laptop scale: a tuned scratch reference, paired seeds, a budget sweep.

    python bench/apollo_vs_scratch.py [--preset cpu-small] [--out DIR] [--workers 2]
        [--seeds 1,2,3] [--lrs 0.5x,1x,2x the preset's lr.peak] [--warmups 0.025,0.1]
        [--searched EXPERIMENT] [--budgets 0.25,0.5,2] [--scratch-budgets 0.75]
        [--arms A,B] [--sweep-arms searched,interp-none] [--sweep-seeds N]
        [--final-eval-tokens 131072] [--report-only] [KEY=VALUE ...]

1. Scratch LR sweep on the first seed: every --lrs x --warmups at full depth. The best by final
   held-out loss is "scratch" and runs on every seed; the target of seed s is scratch's final
   held-out loss on seed s (so the reference is tuned, not handicapped).
2. Arms on every seed at the preset's budget, all at scratch's LR: the Apollo recipe scaled to the
   preset (unique blocks 1 -> L/4 -> L/2 -> L at 10/20/50 %, stages that coincide merged; LVPS,
   interpolation, one warmup + cosine schedule, the reference 2.5 % warmup: `apollo-ref`); the
   same with scratch's warmup (`apollo`); growth without depth sampling, stacking and
   interpolation; instability ablations of `apollo` (Adam moments reset at growth, re-warmup
   after growth, half the LR); and with --searched, the best configuration of a `progtune search`
   experiment (its own LR and schedule) on the same seeds, which that search never used.
3. Budget sweep: scratch and the --sweep-arms (default `searched` and `interp-none`) at
   --budgets x the preset's budget, scratch also at --scratch-budgets (more points for the
   equal-final-loss interpolation), on the first --sweep-seeds seeds (default all).

Every run is `progtune.train.train` in a worker process (1 thread each) with evaluations on a
fixed held-out set during the run, then one large final evaluation (--final-eval-tokens) of the
final weights. Runs land in OUT/runs/*.json as they finish; a rerun with the same settings skips
them (stop and resume at will). The report (OUT/study.md, OUT/summary.json; statistics in
bench/study_stats.py) and OUT/curves-*.png (loss vs FLOPs per budget) are rebuilt from
whatever runs exist.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_arms import REFERENCE_WARMUP, STUDY_OVERRIDES, apollo_stages, arms, searched_config
from study_report import analyse, best_scratch, load_runs, plot_curves
from study_runs import Study, write_json

from progtune.atomic import write_text_atomic

# The study's parts live beside it (study_arms, study_runs, study_report, study_stats); these names
# stay importable from the script.
__all__ = [
    "REFERENCE_WARMUP",
    "STUDY_OVERRIDES",
    "analyse",
    "apollo_stages",
    "arms",
    "main",
    "parse_args",
    "searched_config",
]
# Settings that change what a finished run means: a study folder keeps them (budgets, seeds,
# sweep arms and workers may change: they only add runs).
_SAME_STUDY = ("preset", "overrides", "lrs", "warmups", "final_eval_tokens", "searched")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def floats(text: str) -> list[float]:
        return [float(x) for x in text.split(",") if x]

    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--out", default="runs/apollo-vs-scratch")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seeds", type=ints, default=[1, 2, 3])
    p.add_argument(
        "--lrs", type=floats, default=None, help="default: 0.5x, 1x, 2x the preset's lr.peak"
    )
    p.add_argument("--warmups", type=floats, default=[0.025, 0.1])
    p.add_argument("--searched", default="", metavar="EXPERIMENT")
    # x the preset's budget; with cpu-small's 1.6 M tokens: 0.4 M, 0.8 M, 3.2 M tokens
    p.add_argument("--budgets", type=floats, default=[0.25, 0.5, 2])
    p.add_argument(
        "--scratch-budgets",
        type=floats,
        default=[0.75],
        help="extra budgets for scratch only (points for the equal-final-loss interpolation)",
    )
    p.add_argument(
        "--arms",
        type=lambda t: [x for x in t.split(",") if x],
        default=[],
        help="arms at the preset's budget besides scratch (default all)",
    )
    p.add_argument(
        "--sweep-arms",
        type=lambda t: [x for x in t.split(",") if x],
        default=["searched", "interp-none"],
        help="progressive arms of the budget sweep (searched is skipped without --searched)",
    )
    p.add_argument("--sweep-seeds", type=int, default=0, help="0 = all seeds")
    p.add_argument("--final-eval-tokens", type=int, default=131_072)
    p.add_argument("--report-only", action="store_true", help="rebuild the report, train nothing")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    a = p.parse_args(argv)
    a.sweep_seeds = a.sweep_seeds or len(a.seeds)
    return a


def main(argv: list[str] | None = None) -> int:
    from progtune.errors import ProgtuneError

    args = parse_args(argv)
    started = time.perf_counter()
    try:
        study, meta, searched, data_cfg = _prepare(args)
        if not args.report_only:
            from progtune.data import prepare_data

            prepare_data(data_cfg)  # once, before the workers read the cache
            write_json(study.out / "settings.json", meta["settings"])
            study.execute(study.grid(), started)
        best = best_scratch(load_runs(study.runs_dir))
        if best is None:
            raise ProgtuneError(f"{study.out} has no finished scratch LR-sweep run; run the study")
        meta["best"] = (
            f"lr.peak={best['lr.peak']:g}, lr.warmup_fraction={best['lr.warmup_fraction']:g}"
        )
        if not args.report_only:
            study.execute(study.rest(best, searched), started)
    except ProgtuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _write_report(study, meta, started)
    return 0


def _prepare(args: argparse.Namespace) -> tuple[Study, dict, dict | None, object]:
    """The study, its report's meta data, the searched configuration (or None) and the data
    settings; refuses a study folder that holds runs of other settings."""
    from progtune.config import flatten, parse_assignments, resolve
    from progtune.errors import ProgtuneError

    user = parse_assignments(args.overrides)
    base = resolve(args.preset, overrides={**STUDY_OVERRIDES, **user})
    if args.lrs is None:  # a 3-point grid around the preset's LR
        args.lrs = [float(f"{base.lr.peak * m:.6g}") for m in (0.5, 1, 2)]
    if not args.seeds or not args.lrs or not args.warmups or args.workers < 1:
        raise ProgtuneError("--seeds, --lrs and --warmups need values and --workers >= 1")
    base_flat = flatten(base)
    user = {k: base_flat[k] for k in user}  # typed
    user = {k: list(v) if isinstance(v, tuple) else v for k, v in user.items()}
    searched, searched_desc = (
        searched_config(args.searched, base_flat) if args.searched else (None, "")
    )
    study = Study(args, user, base_flat)
    meta = {
        "preset": args.preset,
        "model": f"{base.model.arch} {base.model.n_layers}x{base.model.d_model}, "
        f"seq {base.model.seq_len}, vocab {base.data.vocab_size}",
        "budget": study.budget,
        "seeds": args.seeds,
        "overrides": " ".join(args.overrides),
        "searched": searched_desc,
        "settings": {k: v for k, v in vars(args).items() if k != "report_only"},
    }
    settings_file = study.out / "settings.json"
    if settings_file.is_file():
        old = json.loads(settings_file.read_text())
        new = json.loads(json.dumps(meta["settings"]))
        if any(old.get(k) != new.get(k) for k in _SAME_STUDY):
            raise ProgtuneError(
                f"{study.out} holds a study with other settings; pass a new --out "
                "or the same arguments"
            )
    return study, meta, searched, base.data


def _write_report(study: Study, meta: dict, started: float) -> None:
    """study.md, summary.json and one loss-vs-FLOPs plot per budget, from every finished run."""
    runs = load_runs(study.runs_dir)
    summary, text = analyse(runs, meta)
    write_json(study.out / "summary.json", summary)
    for mult in sorted({r["budget_mult"] for r in runs if r["phase"] != "lr-sweep"}):
        plot_curves(runs, study.out / f"curves-{mult:g}x.png", mult)
    write_text_atomic(study.out / "study.md", text)
    print(text)
    print(
        f"wrote {study.out / 'study.md'} and summary.json in {time.perf_counter() - started:.0f}s"
    )


if __name__ == "__main__":
    sys.exit(main())
