"""A recorded landscape read for replay, each run scored as the product scores it, and the metrics.

Scores. The reference on seed s is scratch at the preset's LR (landscape_space.scratch(base, 1.0),
label "scratch lr x1"); the target on seed s is its final eval_loss on seed s. The target is known
from the start of a replayed search: the product reuses a stored reference (`--reference`), so its
cost is not counted. A run's objective is the product's (progtune.search_state.objective: FLOPs to
the target, or the surrogate planned_flops x (best/target)^10 for a miss). Its saving is
progtune.results.saving(objective, reference FLOPs to target): for a hit that is the usual saving;
a miss gets the surrogate's saving, which is <= 0 (its objective is at least a whole budget), so
misses rank below every hit and among themselves by their best loss. A failed run (no curve) has
saving -inf. Compute is counted in whole-run equivalents: FLOPs spent by trials / the reference's
total FLOPs.

Metrics (per strategy; a search selects its incumbent on one seed and is scored on the other, both
directions count), each against two ceilings on the scoring seed (CEILINGS):
- `best`: the landscape's best saving (best over the configurations a search space can propose:
  scratch runs are left out) - the literal goal; out of reach where the seed noise of a saving is
  above 2 points, because it is a maximum over noisy values;
- `selector`: what a perfect selector reaches - the configuration with the best saving on the
  selection seed, scored on the scoring seed (the same configuration for every search in that
  direction). An incumbent may beat it (negative regret).
For each: compute until the incumbent is within 2 points of the ceiling, its median with a
bootstrap interval; P(within 2 points) at 8, 16 and 32 run-equivalents with Wilson intervals
(`p_within_best_at_16`, `p_within_selector_at_16`); a regret-vs-compute PNG (a panel per ceiling,
median regret, bootstrap band).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from progtune.config import KNOB_TYPES, Config, from_flat
from progtune.results import flops_to_target, saving
from progtune.search_state import objective

REFERENCE_LABEL = "scratch lr x1"  # landscape_space.scratch(base, 1.0).label
WITHIN = 0.02  # "within 2 points" of the best saving
BUDGETS = (8.0, 16.0, 32.0)  # run-equivalents at which P(within) is reported
CEILINGS = ("best", "selector")  # what the incumbent's saving is compared with (module doc)


class LandscapeError(ValueError):
    """A landscape folder that cannot be replayed (one-line reason)."""


@dataclass(frozen=True)
class Run:
    """One recorded (config, seed): its curve (eval points in FLOP order) and summary."""

    flops: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    stage: np.ndarray
    total_flops: float
    total_tokens: float
    growth_tokens: float  # tokens at the last growth (last boundary x budget); 0: no growth
    final_loss: float
    status: str  # completed | diverged | failed

    def rows(self) -> list[dict[str, float]]:
        return [
            {"flops": float(f), "tokens": float(t), "eval_loss": float(v)}
            for f, t, v in zip(self.flops, self.tokens, self.loss, strict=True)
        ]

    def loss_at(self, flops: float, vocab_size: int) -> float:
        """The last recorded finite loss at or before `flops` (ln V, a uniform guess, if none)."""
        ok = (self.flops <= flops * (1 + 1e-12)) & np.isfinite(self.loss)
        return float(self.loss[ok][-1]) if ok.any() else math.log(vocab_size)


@dataclass
class Landscape:
    folder: Path
    knobs: pd.DataFrame  # one row per config_id (index), its knob columns and label
    runs: dict[tuple[str, int], Run]
    seeds: list[int]
    reference_id: str
    vocab_size: int
    base: Config  # the reference's config: n_layers, the preset's LR (what a space is built on)
    searchable: list[str]  # progressive configs (>= 2 stages): what a search space can propose

    def reference(self, seed: int) -> Run:
        return self.runs[(self.reference_id, seed)]

    def objective(self, cfg_id: str, seed: int) -> float:
        """The product's objective of a run on `seed` (its own seed's target)."""
        run, ref = self.runs[(cfg_id, seed)], self.reference(seed)
        if run.status == "failed" or len(run.flops) == 0:
            return math.inf
        planned = max(run.total_flops, ref.total_flops)
        return objective(run.rows(), ref.final_loss, planned, self.vocab_size)

    def saving(self, cfg_id: str, seed: int) -> float:
        ref = self.reference(seed)
        c_ref = flops_to_target(ref.rows(), ref.final_loss)
        value = saving(self.objective(cfg_id, seed), c_ref)
        return -math.inf if value is None else value


def _read_run(curve: pd.DataFrame, summary: pd.Series) -> Run:
    curve = curve.sort_values("flops")
    bounds = summary["stages.boundaries"]
    growth = float(bounds[-1]) * float(summary["budget.tokens"]) if len(bounds) else 0.0
    return Run(
        flops=curve["flops"].to_numpy(float),
        tokens=curve["tokens"].to_numpy(float),
        loss=curve["eval_loss"].to_numpy(float),
        stage=curve["stage"].fillna(0).to_numpy(float),
        total_flops=float(summary["flops"]) if pd.notna(summary["flops"]) else 0.0,
        total_tokens=float(summary["tokens"]) if pd.notna(summary["tokens"]) else 0.0,
        growth_tokens=growth,
        final_loss=float(summary["eval_loss"]) if pd.notna(summary["eval_loss"]) else math.nan,
        status=str(summary["status"]),
    )


def _reference_knobs(folder: Path, cfg_id: str, seed: int) -> dict[str, Any]:
    """The reference run's knobs as Python values (pyarrow: nulls stay None, not pandas' NaN)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(folder / f"{cfg_id}-s{seed}.parquet").to_pylist()
    # a null knob (e.g. data.max_tokens) is its default: from_flat does not take None
    return {k: v for k, v in rows[-1].items() if k in KNOB_TYPES and v is not None}


def load_landscape(folder: Path, reference_label: str = REFERENCE_LABEL) -> Landscape:
    """Read a landscape folder (Parquet part files); LandscapeError says why it cannot be used."""
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        raise LandscapeError(f"{folder} is not a landscape folder (no Parquet part files)")
    df = pd.read_parquet(folder)
    summaries = df[df["row"] == "summary"]
    seeds = sorted(int(s) for s in summaries["seed"].unique())
    if len(seeds) < 2:
        raise LandscapeError(
            f"{folder} holds seed(s) {seeds} only: replay selects on one seed and scores on "
            "another, so it needs 2"
        )
    refs = summaries[summaries["label"] == reference_label]["config_id"].unique()
    if len(refs) != 1:
        raise LandscapeError(f"{folder} has no single reference run labelled {reference_label!r}")
    curves = df[df["row"] == "curve"]
    runs = {}
    for (cfg_id, seed), s in summaries.groupby(["config_id", "seed"]):
        c = curves[(curves["config_id"] == cfg_id) & (curves["seed"] == seed)]
        runs[(str(cfg_id), int(seed))] = _read_run(c, s.iloc[-1])
    complete = {
        cid for cid in summaries["config_id"].unique() if all((cid, s) in runs for s in seeds)
    }
    for seed in seeds:
        if runs[(refs[0], seed)].status != "completed":
            raise LandscapeError(f"{folder}: the reference run on seed {seed} did not complete")
    knobs = summaries.drop_duplicates("config_id").set_index("config_id")
    # the space is built on the preset (scratch at its LR), whichever run sets the target
    preset = summaries[summaries["label"] == REFERENCE_LABEL]["config_id"].unique()
    flat = _reference_knobs(folder, str((preset if len(preset) == 1 else refs)[0]), seeds[0])
    searchable = [
        c for c in knobs.index if c in complete and len(knobs.loc[c, "stages.boundaries"]) > 0
    ]
    if not searchable:
        raise LandscapeError(f"{folder} holds no progressive configuration on every seed")
    return Landscape(
        folder=folder,
        knobs=knobs,
        runs=runs,
        seeds=seeds,
        reference_id=str(refs[0]),
        vocab_size=int(knobs.loc[refs[0], "data.vocab_size"]),
        base=from_flat(flat),
        searchable=searchable,
    )


def seed_noise(table: pd.DataFrame, seeds: list[int]) -> tuple[float, int]:
    """Median |saving on one seed - on the other| over configurations that reach the target on
    both (the seed noise of a saving), and how many there are."""
    a, b = table[f"saving_s{seeds[0]}"], table[f"saving_s{seeds[1]}"]
    both = (a > 0) & (b > 0) & np.isfinite(a) & np.isfinite(b)
    gaps = (a[both] - b[both]).abs()
    return (float(gaps.median()) if len(gaps) else math.nan), int(both.sum())


def scores(land: Landscape) -> pd.DataFrame:
    """objective and saving of every searchable config on every seed (columns per seed)."""
    rows = []
    for cfg_id in land.searchable:
        row: dict[str, Any] = {"config_id": cfg_id, "label": land.knobs.loc[cfg_id, "label"]}
        for s in land.seeds:
            row[f"objective_s{s}"] = land.objective(cfg_id, s)
            row[f"saving_s{s}"] = land.saving(cfg_id, s)
        rows.append(row)
    return pd.DataFrame(rows).set_index("config_id")


# ----------------------------------------------------------------------------- metrics
def ceilings(table: pd.DataFrame, select_seed: int, score_seed: int) -> tuple[dict, str]:
    """Each ceiling's saving on the scoring seed, and the perfect selector's configuration (the
    best on the selection seed; ties: the first in landscape order)."""
    score = table[f"saving_s{score_seed}"]
    picked = str(table[f"saving_s{select_seed}"].idxmax())
    return {"best": float(score.max()), "selector": float(score[picked])}, picked


def incumbent_savings(trace: list[tuple[float, str | None]], score: pd.Series) -> np.ndarray:
    """(compute, incumbent) events -> the incumbent's saving on the scoring seed at each event.

    No incumbent yet scores 0 (the user would fall back to training from scratch)."""
    return np.array([0.0 if cid is None else score[cid] for _, cid in trace])


def compute_to_within(
    trace: list[tuple[float, str | None]], score: pd.Series, best: float
) -> float:
    """Run-equivalents spent when the incumbent is first within WITHIN of `best` (inf: never)."""
    savings = incumbent_savings(trace, score)
    for (compute, _), s in zip(trace, savings, strict=True):
        if best - s <= WITHIN + 1e-12:
            return compute
    return math.inf


def regret_curve(
    trace: list[tuple[float, str | None]], score: pd.Series, best: float, grid: np.ndarray
) -> np.ndarray:
    """Regret (best saving - incumbent's, in points) at each compute of `grid`."""
    computes = np.array([c for c, _ in trace])
    savings = incumbent_savings(trace, score)
    idx = np.searchsorted(computes, grid, side="right") - 1
    inc = np.where(idx >= 0, savings[np.clip(idx, 0, None)], 0.0)
    return 100.0 * (best - inc)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_median(values: np.ndarray, seed: int = 0, n_boot: int = 2000) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the median (inf where more than half are inf)."""
    values = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    meds = np.median(rng.choice(values, size=(n_boot, len(values)), replace=True), axis=1)
    # order statistics, not interpolation: an inf median (most searches never got within) stays inf
    lo, hi = np.quantile(meds, 0.025, method="lower"), np.quantile(meds, 0.975, method="higher")
    return (float(lo), float(hi))


def _ceiling_summary(g: pd.DataFrame, ceiling: str, budget: float) -> dict[str, Any]:
    """Median compute to within 2 points of `ceiling` [bootstrap CI] and P(within) [Wilson CI]."""
    c = g[f"compute_to_{ceiling}"].to_numpy(float)
    lo, hi = bootstrap_median(c)
    row: dict[str, Any] = {f"median_compute_{ceiling}": float(np.median(c))}
    row |= {f"median_compute_{ceiling}_lo": lo, f"median_compute_{ceiling}_hi": hi}
    for b in (b for b in BUDGETS if b <= budget):
        k, key = int((c <= b).sum()), f"p_within_{ceiling}_at_{b:g}"
        row[key], (row[f"{key}_lo"], row[f"{key}_hi"]) = k / len(c), wilson(k, len(c))
    return row


def summarize(results: pd.DataFrame, budget: float = max(BUDGETS)) -> pd.DataFrame:
    """One row per strategy: for each of CEILINGS, the median compute to within 2 points [CI]
    and P(within) [Wilson CI] at each of BUDGETS the searches ran to (`budget`)."""
    rows = []
    for name, g in results.groupby("strategy", sort=False):
        row: dict[str, Any] = {"strategy": name, "searches": len(g)}
        for ceiling in CEILINGS:
            row |= _ceiling_summary(g, ceiling, budget)
        row["mean_snap_distance"] = g["mean_snap_distance"].mean()
        row["trials"] = g["trials"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def _num(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:.1f}"


CEILING_TITLES = {
    "best": "P(within 2 points of the landscape's best saving on the scoring seed)",
    "selector": "P(within 2 points of a perfect selector: the selection seed's best config, "
    "scored on the scoring seed)",
}


def _ceiling_table(summary: pd.DataFrame, ceiling: str) -> list[str]:
    budgets = [b for b in BUDGETS if f"p_within_{ceiling}_at_{b:g}" in summary]
    head = f"| strategy | searches | median run-eq to within 2 pts of {ceiling} [95% CI] | "
    head += "".join(f"P at {b:g} [Wilson 95%] | " for b in budgets)
    head += "trials | mean snap distance |"
    lines = [f"{CEILING_TITLES[ceiling]}:", "", head, "|" + "---|" * (5 + len(budgets))]
    for r in summary.to_dict("records"):
        m = f"median_compute_{ceiling}"
        cells = [r["strategy"], str(r["searches"])]
        cells.append(f"{_num(r[m])} [{_num(r[f'{m}_lo'])}, {_num(r[f'{m}_hi'])}]")
        for b in budgets:
            key = f"p_within_{ceiling}_at_{b:g}"
            cells.append(f"{r[key]:.2f} [{r[f'{key}_lo']:.2f}, {r[f'{key}_hi']:.2f}]")
        cells += [f"{r['trials']:.1f}", f"{r['mean_snap_distance']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_table(summary: pd.DataFrame) -> str:
    """A table per ceiling (CEILINGS)."""
    lines = []
    for ceiling in CEILINGS:
        lines += [*_ceiling_table(summary, ceiling), ""]
    lines.append("(never: not within 2 points by the end of the search's budget)")
    return "\n".join(lines)


def _plot_panel(ax: Any, curves: dict[str, np.ndarray], grid: np.ndarray, ceiling: str) -> None:
    rng = np.random.default_rng(0)
    for i, (name, regrets) in enumerate(curves.items()):  # regrets: searches x grid
        med = np.median(regrets, axis=0)
        boot = rng.integers(0, len(regrets), size=(500, len(regrets)))
        meds = np.median(regrets[boot], axis=1)
        ax.plot(grid, med, label=name, linestyle=("-", "--", "-.", ":")[i % 4])
        lo, hi = np.quantile(meds, 0.025, axis=0), np.quantile(meds, 0.975, axis=0)
        ax.fill_between(grid, lo, hi, alpha=0.2)
    ax.axhline(100 * WITHIN, color="grey", linestyle=":", label="2 points")
    ax.set_yscale("symlog", linthresh=1.0)
    if ceiling == "best":
        ax.set_ylim(bottom=0.0)  # regret >= 0: the best is taken over every searchable config
    else:
        ax.axhline(0.0, color="black", linewidth=0.5)  # an incumbent may beat the selector
    ax.set_xlabel("compute spent (whole-run equivalents of the reference)")
    ax.set_ylabel(f"regret vs {ceiling}: its saving - incumbent's (points)")
    ax.set_title(
        "vs the best saving" if ceiling == "best" else "vs a perfect selector", fontsize=10
    )


def plot_regret(curves: dict[str, dict[str, np.ndarray]], grid: np.ndarray, path: Path) -> None:
    """Median regret (points) vs run-equivalents per strategy, 95 % bootstrap band, a panel per
    ceiling (`curves[ceiling][strategy]`: searches x grid); atomic PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from progtune.atomic import write_atomic

    fig, axes = plt.subplots(1, len(CEILINGS), figsize=(12, 4.5))
    for ax, ceiling in zip(np.atleast_1d(axes), CEILINGS, strict=True):
        _plot_panel(ax, curves[ceiling], grid, ceiling)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle("median regret on the scoring seed (band: 95% bootstrap)")
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
