"""Which knob levels pay on a recorded landscape: per knob level, how many configurations reach
the target (on both seeds / on either) and their median mean saving - the evidence behind the
`apollo` space's ranges (search_spaces/apollo.py).

    .venv/bin/python bench/landscape_knobs.py bench/landscape/stdlib-b4-400k [more folders]

Saving = the product's (FLOPs to the target of scratch at the preset's LR; a miss gets the
surrogate's saving, <= 0), averaged over the seeds; a configuration counts as reaching the target
on a seed when its saving there is > 0. Searchable (progressive) configurations only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from replay_metrics import LandscapeError, load_landscape, scores

# knob -> its level in each configuration (knobs: the landscape's rows; lr: the preset's peak)
KNOBS = {
    "schedule": lambda k, lr: k["stages.unique_layers"].map(lambda v: "-".join(map(str, v))),
    "first boundary": lambda k, lr: k["stages.boundaries"].map(lambda v: round(float(v[0]), 2)),
    "last boundary": lambda k, lr: k["stages.boundaries"].map(lambda v: round(float(v[-1]), 1)),
    "depth sampler": lambda k, lr: k["sampling.strategy"],
    "operator": lambda k, lr: k["growth.operator"],
    "Adam moments": lambda k, lr: k["growth.optimizer_state"],
    "LR x preset": lambda k, lr: (k["lr.peak"] / lr).round(2),
    "warmup": lambda k, lr: k["lr.warmup_fraction"],
    "LR schedule": lambda k, lr: k["lr.schedule"],
    "re-warmup": lambda k, lr: k["lr.rewarmup_fraction"],
}


def table(folder: Path) -> pd.DataFrame:
    """One row per (knob, level): configurations, reaching the target on both / either seed,
    median and best mean saving."""
    land = load_landscape(folder)
    sc = scores(land)
    knobs = land.knobs.loc[sc.index]
    savings = sc[[c for c in sc if c.startswith("saving_s")]].replace(-np.inf, np.nan)
    hits = savings > 0
    frame = pd.DataFrame(
        {"mean": savings.mean(axis=1), "both": hits.all(axis=1), "either": hits.any(axis=1)}
    )
    rows = []
    for name, get in KNOBS.items():
        for value, g in frame.groupby(get(knobs, land.base.lr.peak)):
            rows.append(
                {
                    "knob": name,
                    "level": value,
                    "configs": len(g),
                    "reach both seeds": int(g["both"].sum()),
                    "reach either": int(g["either"].sum()),
                    "median saving %": round(100 * g["mean"].median(), 1),
                    "best saving %": round(100 * g["mean"].max(), 1),
                }
            )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("landscapes", nargs="+", type=Path)
    opts = p.parse_args(argv)
    try:
        tables = {folder: table(folder) for folder in opts.landscapes}
    except LandscapeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for folder, t in tables.items():
        print(f"{folder} ({t[t['knob'] == 'schedule']['configs'].sum()} configurations)")
        print(t.to_markdown(index=False) if _has_tabulate() else t.to_string(index=False))
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
