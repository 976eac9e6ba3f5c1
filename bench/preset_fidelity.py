"""Does a cheap scale rank configurations like cpu-small? Record ~10 configurations at both.

    .venv/bin/python bench/preset_fidelity.py --list      # plan and cost, runs nothing
    .venv/bin/python bench/preset_fidelity.py             # record what is missing, then report
    .venv/bin/python bench/preset_fidelity.py --report    # report what is recorded

Ten diverse configurations (scratch at 3 LRs, growth without sampling, the Apollo recipe, the
reference recipe's short warmup that diverges, the default search's best, a 2-block start,
uniform and full depth sampling), seed 1, on the Python-source corpus, at cpu-small and at two
cheap scales (bench/landscape_space.py): `cheap` first (~30 core-seconds a run), then cpu-small
(~4 core-minutes a run, the reference first), then `cheap-lr2e-3`; each run is written as it
ends (bench/landscape.py), so a stopped recording continues where it stopped. The report
ranks configurations at each scale by FLOPs-to-target saving against that scale's reference
(scratch at the preset's LR; target = its final loss), those that never reach the target below
them by final loss, and gives Spearman's rho between each cheap scale and cpu-small over the
configurations recorded at both, with a bootstrap interval over configurations.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from landscape import cost_lines, planned_runs, record
from landscape_space import Point, base_config, grown, scratch

from progtune.config import Config
from progtune.results import flops_to_target, saving

OUT = Path(__file__).resolve().parent / "landscape"
# Recorded in this order; each other scale is compared with REFERENCE_SCALE.
SCALE_NAMES = ("cheap", "cpu-small", "cheap-lr2e-3", "b4-400k", "w64-800k")
REFERENCE_SCALE = "cpu-small"
SEED = 1


def fidelity_points(base: Config) -> list[Point]:
    """The ten configurations, the reference (scratch at the preset's LR) first."""
    s124, b = (1, 2, 4), (0.2, 0.5)
    interp = {"growth__operator": "interpolation"}
    return [
        scratch(base, 1.0),
        grown(base, s124, b, "none", **interp),  # growth without sampling (start point)
        grown(base, s124, b, "lvps", growth__operator="interpolation", lr__warmup_fraction=0.025),
        grown(  # the default search's best (docs/benchmarks.md 1a)
            base,
            (1, 4),
            (0.431,),
            "none",
            growth__operator="stacking",
            growth__optimizer_state="reset",
            lr__peak_factor=1.3625,
            lr__warmup_fraction=0.132,
            lr__rewarmup_fraction=0.05,
        ),
        scratch(base, 0.5),
        grown(base, s124, b, "uniform", **interp),
        grown(base, (2, 4), (0.3,), "none", **interp),
        grown(base, s124, b, "lvps", **interp),  # the Apollo recipe, 10 % warmup (start point)
        grown(base, s124, b, "full", **interp),
        scratch(base, 2.0),
    ]


def _scale_folder(name: str, root: Path = OUT) -> Path:
    return root / f"fidelity-stdlib-{name}"


def _runs(name: str) -> tuple[Config, list[tuple]]:
    base = base_config(name, {"data.corpus": "stdlib"})
    return base, planned_runs(base, fidelity_points(base), [SEED])


def scale_scores(name: str, root: Path = OUT) -> dict[int, dict[str, Any]]:
    """Position in fidelity_points -> {saving, final, status} at one scale (recorded runs only;
    {} without a target)."""
    _, runs = _runs(name)
    folder = _scale_folder(name, root)
    curves = {}
    for index, (_, seed, cfg_id) in enumerate(runs):  # by position: labels hold absolute LRs
        path = folder / f"{cfg_id}-s{seed}.parquet"
        if path.exists():
            curves[index] = pq.read_table(path).to_pylist()
    reference = curves.get(0)
    if not reference:
        return {}
    target = reference[-1]["eval_loss"]
    ref_flops = flops_to_target(_curve(reference), target)
    out = {}
    for index, rows in curves.items():
        reached = flops_to_target(_curve(rows), target)
        final = rows[-1]["eval_loss"]
        out[index] = {
            "saving": saving(reached, ref_flops),
            "final": final if final is not None and np.isfinite(final) else float("inf"),
            "status": rows[-1]["status"],
        }
    return out


def _curve(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["row"] == "curve"]


def rank_key(score: dict[str, Any]) -> tuple:
    """Sort key, best first: reached the target (by saving), then by final loss."""
    if score["saving"] is not None:
        return (0, -score["saving"])
    return (1, score["final"])


def ranks(scores: list[dict[str, Any]]) -> np.ndarray:
    """1-based ranks (ties averaged) of `scores` under rank_key."""
    keys = [rank_key(s) for s in scores]
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    out = np.empty(len(keys))
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and keys[order[j + 1]] == keys[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two rank vectors (nan when either is constant)."""
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def rho_with_interval(
    cheap: list[dict], full: list[dict], resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Spearman's rho of the paired scores and a 95 % percentile bootstrap over configurations."""
    rho = spearman(ranks(cheap), ranks(full))
    rng = np.random.default_rng(seed)
    n, boot = len(cheap), []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        r = spearman(ranks([cheap[i] for i in idx]), ranks([full[i] for i in idx]))
        if np.isfinite(r):
            boot.append(r)
    if not boot:
        return rho, float("nan"), float("nan")
    low, high = np.percentile(boot, [2.5, 97.5])
    return rho, float(low), float(high)


def report_lines(root: Path = OUT) -> list[str]:
    """A table of every scale, then each cheap scale's rank correlation with cpu-small over the
    configurations recorded at both."""
    scores = {name: scale_scores(name, root) for name in SCALE_NAMES}
    labels = [p.label for p in fidelity_points(base_config("cheap", {}))]
    lines = [f"{'configuration':58s} " + "  ".join(f"{n:>22s}" for n in SCALE_NAMES)]
    for index, label in enumerate(labels):
        cells = []
        for name in SCALE_NAMES:
            s = scores[name].get(index)
            if s is None:
                cells.append(f"{'-':>22s}")
            else:
                sav = "miss" if s["saving"] is None else f"{100 * s['saving']:+.1f}%"
                cells.append(f"{sav:>7s} {s['final']:7.3f} {s['status'][:6]:>6s}")
        lines.append(f"{label[:58]:58s} " + "  ".join(cells))
    for name in SCALE_NAMES:
        if name != REFERENCE_SCALE:
            lines.append(_rho_line(scores, labels, name))
    return lines


def _rho_line(scores: dict[str, dict], labels: list[str], name: str) -> str:
    both = [i for i in range(len(labels)) if i in scores[name] and i in scores[REFERENCE_SCALE]]
    if len(both) < 3:
        return f"{name}: {len(both)} configurations recorded at both scales, too few for a rho"
    rho, low, high = rho_with_interval(
        [scores[name][x] for x in both], [scores[REFERENCE_SCALE][x] for x in both]
    )
    return (
        f"Spearman rho ({name} vs {REFERENCE_SCALE}) over {len(both)} configurations: "
        f"{rho:.2f} [95 % bootstrap {low:.2f}, {high:.2f}]"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--list", action="store_true", help="plan and cost per scale, run nothing")
    p.add_argument("--report", action="store_true", help="report what is recorded, run nothing")
    p.add_argument("--limit", type=int, default=None, help="at most N more runs in all")
    p.add_argument("--out", type=Path, default=OUT, help="folder of the scale folders")
    p.add_argument("--scales", default=",".join(SCALE_NAMES), help="record only these (a,b)")
    args = p.parse_args(argv)
    scales = [s for s in args.scales.split(",") if s]
    if unknown := sorted(set(scales) - set(SCALE_NAMES)):
        p.error(f"unknown scale {unknown[0]}: choose from {', '.join(SCALE_NAMES)}")
    if args.list:
        for name in SCALE_NAMES:
            print(f"== {name}")
            print("\n".join(cost_lines(_runs(name)[1], _scale_folder(name, args.out))))
        return 0
    if not args.report:
        _record_all(args.limit, args.out, scales)
    print("\n".join(report_lines(args.out)))
    return 0


def _record_all(limit: int | None, root: Path, scales: Sequence[str]) -> None:
    import os

    from progtune.data import prepare_data

    os.nice(19 - os.nice(0))  # background work: the 2 cores are shared
    left = limit
    for name in scales:
        base, runs = _runs(name)
        data = prepare_data(base.data)
        done = record(
            base, runs, _scale_folder(name, root), data, left, log=lambda s: print(s, flush=True)
        )
        if left is not None:
            left -= done
            if left <= 0:
                return


if __name__ == "__main__":
    sys.exit(main())
