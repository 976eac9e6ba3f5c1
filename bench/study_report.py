"""The Apollo-vs-scratch study's report from its run records: paired comparisons, noise, tables.

Used by bench/apollo_vs_scratch.py; statistics in bench/study_stats.py; no torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import study_stats as st
from study_arms import ARM_ORDER


def load_runs(runs_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]


def final_loss(rec: dict) -> float | None:
    f = rec.get("final") or {}
    return f.get("loss")


def best_scratch(runs: list[dict]) -> dict | None:
    grid = [r for r in runs if r["phase"] == "lr-sweep" and final_loss(r) is not None]
    if not grid:
        return None
    best = min(grid, key=final_loss)
    return {k: best["overrides"][k] for k in ("lr.peak", "lr.warmup_fraction")}


@dataclass(frozen=True)
class _RunIndex:
    """The run records by (arm, budget multiple, seed), and where scratch ran."""

    by: dict[tuple[str, float, int], dict]
    seeds: list[int]  # seeds with a scratch run
    mults: list[float]  # budget multiples with a scratch run

    @classmethod
    def of(cls, runs: list[dict]) -> _RunIndex:
        return cls(
            by={(r["arm"], r["budget_mult"], r["seed"]): r for r in runs},
            seeds=sorted({r["seed"] for r in runs if r["arm"] == "scratch"}),
            mults=sorted({r["budget_mult"] for r in runs if r["arm"] == "scratch"}),
        )

    def scratch_points(self, seed: int) -> list[tuple[float, float]]:
        """(total FLOPs, final loss) of scratch at every budget of one seed."""
        by = self.by
        return [
            (by[("scratch", m, seed)]["total_flops"], final_loss(by[("scratch", m, seed)]))
            for m in self.mults
            if ("scratch", m, seed) in by
        ]


def analyse(runs: list[dict], meta: dict) -> tuple[dict, str]:
    """Summary dict and markdown from the run records."""
    ix = _RunIndex.of(runs)
    by, seeds = ix.by, ix.seeds
    present = {r["arm"] for r in runs if r["phase"] == "arms"}
    arm_names = [a for a in ARM_ORDER if a in present] + sorted(present - set(ARM_ORDER))
    main = {a: _compare(ix, a, 1.0) for a in ["scratch", *arm_names] if a != "scratch" or seeds}
    sweep_arms = sorted(
        {r["arm"] for r in runs if r["phase"] == "budgets" and r["arm"] != "scratch"}
    )
    sweep = {
        f"{a}@{m:g}x": _compare(ix, a, m)
        for a in sweep_arms
        for m in sorted({1.0, *ix.mults})
        if any((a, m, s) in by for s in seeds)
    }
    per_seed = {
        a: {str(sd): final_loss(by[(a, 1.0, sd)]) for sd in seeds if (a, 1.0, sd) in by}
        for a in ["scratch", *arm_names]
    }
    summary = {
        "meta": meta,
        "per_seed": per_seed,
        "lr_sweep": _lr_sweep(runs),
        "main": main,
        "sweep": sweep,
        "noise": _noise(runs, ix),
        "wall": _wall(runs),
        "runs": len(runs),
    }
    return summary, render(summary)


def _compare(ix: _RunIndex, arm: str, mult: float) -> dict:
    """One arm at one budget against scratch on the same seeds: crossings, losses, equal loss."""
    # The product's crossing rule (any column) and saving convention.
    from progtune.results import flops_to_target, saving

    cross_f, cross_w, d_loss, eq, kinds, total_ratio = [], [], [], [], [], []
    reached = n = 0
    losses = []
    for seed in ix.seeds:
        ref, rec = ix.by.get(("scratch", mult, seed)), ix.by.get((arm, mult, seed))
        if ref is None or rec is None:
            continue
        n += 1
        losses.append(final_loss(rec))
        target = ref["final_eval_loss"]
        total_ratio.append(rec["total_flops"] / ref["total_flops"])
        if target is not None:
            f_ref = flops_to_target(ref["curve"], target, "flops")
            w_ref = flops_to_target(ref["curve"], target, "wall_s")
            f_m = flops_to_target(rec["curve"], target, "flops")
            w_m = flops_to_target(rec["curve"], target, "wall_s")
            if f_m is not None:
                reached += 1
                cross_f.append(saving(f_m, f_ref))
                cross_w.append(saving(w_m, w_ref))
        if final_loss(rec) is not None and final_loss(ref) is not None:
            d_loss.append(final_loss(rec) - final_loss(ref))
            f_eq, kind = st.equal_loss_flops(ix.scratch_points(seed), final_loss(rec))
            if arm != "scratch" and f_eq is not None:
                eq.append(saving(rec["total_flops"], f_eq))
                kinds.append(kind)
    cf, cw = st.mean_interval(cross_f), st.mean_interval(cross_w)
    ratio = cw["mean"] / cf["mean"] if cf["mean"] and cw["mean"] is not None else None
    return {
        "n": n,
        "reached": reached,
        "crossing_flops_saving": cf,
        "crossing_wall_saving": cw,
        "wall_over_flops_saving": ratio,
        "total_flops_ratio": st.mean_interval(total_ratio),
        "final_loss": st.mean_interval(losses),
        "delta_loss_vs_scratch": st.mean_interval(d_loss),
        "equal_loss_flops_saving": st.mean_interval(eq),
        "equal_loss_kinds": {k: kinds.count(k) for k in sorted(set(kinds))},
    }


def _noise(runs: list[dict], ix: _RunIndex) -> dict:
    """Standard error of one final evaluation and of a paired difference; scratch's seed sd."""
    by = ix.by
    ses = [r["final"]["se"] for r in runs if (r.get("final") or {}).get("se") is not None]
    paired = [
        st.paired_se(by[(a, m, sd)]["final"], by[("scratch", m, sd)]["final"])
        for (a, m, sd) in by
        if not a.startswith("scratch") and ("scratch", m, sd) in by
    ]
    paired = [x for x in paired if x is not None]
    return {
        "final_eval_se_mean": sum(ses) / len(ses) if ses else None,
        "paired_difference_se_mean": sum(paired) / len(paired) if paired else None,
        "paired_comparisons": len(paired),
        "scratch_seed_sd": {
            f"{m:g}x": st.mean_interval(
                [final_loss(by[("scratch", m, s)]) for s in ix.seeds if ("scratch", m, s) in by]
            )["sd"]
            for m in ix.mults
        },
    }


def _lr_sweep(runs: list[dict]) -> list[dict]:
    return [
        {
            "lr": r["overrides"]["lr.peak"],
            "warmup": r["overrides"]["lr.warmup_fraction"],
            "final_loss": final_loss(r),
            "se": (r.get("final") or {}).get("se"),
            "curve_final": r["final_eval_loss"],
            "status": r["status"],
        }
        for r in runs
        if r["phase"] == "lr-sweep"
    ]


def _wall(runs: list[dict]) -> dict:
    """Seconds of training, of evaluation (during runs and final) and of whole runs."""
    return {
        "train_s": sum(r["total_wall_s"] for r in runs),
        "eval_s": sum(r["eval_wall_s"] + (r.get("final") or {}).get("wall_s", 0.0) for r in runs),
        "run_s": sum(r["run_wall_s"] for r in runs),
    }


def plot_curves(runs: list[dict], path: Path, mult: float = 1.0) -> None:
    """Held-out loss vs FLOPs at one budget: mean over seeds per arm (same eval grid per arm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    arms_here = [r["arm"] for r in runs if r["budget_mult"] == mult and r["phase"] != "lr-sweep"]
    for arm in ["scratch", *[a for a in ARM_ORDER if a in arms_here]]:
        curves = [r["curve"] for r in runs if r["arm"] == arm and r["budget_mult"] == mult]
        n = min(len(c) for c in curves)
        xs = [sum(c[i]["flops"] for c in curves) / len(curves) for i in range(n)]
        ys = [sum(c[i]["eval_loss"] for c in curves) / len(curves) for i in range(n)]
        style = {"color": "black", "linewidth": 2.5} if arm == "scratch" else {"linewidth": 1.2}
        ax.plot(xs[1:], ys[1:], marker=".", label=f"{arm} ({len(curves)} seeds)", **style)
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("held-out loss (full depth, mean over seeds)")
    ax.set_title(f"budget {mult:g}x: held-out loss vs compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def render(s: dict) -> str:
    m, w = s["meta"], {k: v / 3600 for k, v in s["wall"].items()}
    out = [
        f"Preset `{m['preset']}` ({m['model']}), budget {m['budget']:,} tokens, seeds "
        f"{m['seeds']}, overrides {m['overrides'] or 'none'}; {s['runs']} runs, "
        f"{w['run_s']:.2f} worker-hours (train {w['train_s']:.2f} h, "
        f"evaluation {w['eval_s']:.2f} h).",
        "",
        "**Scratch LR sweep** (first seed; final loss on the large held-out set ± its standard "
        "error)",
        "",
        _table(
            ["peak LR", "warmup", "final loss", "status"],
            [
                [
                    f"{g['lr']:g}",
                    f"{g['warmup']:g}",
                    f"{st.fmt(g['final_loss'], '.4f')} ± {st.fmt(g['se'], '.4f')}",
                    g["status"],
                ]
                for g in sorted(s["lr_sweep"], key=lambda g: (g["warmup"], g["lr"]))
            ],
        ),
        "",
        f"Best scratch: {m.get('best')}. Searched configuration: {m.get('searched') or 'none'}.",
        "",
        "**At the preset's budget** (paired seeds; savings = mean [95 % t-interval] over the seeds "
        "that reached the target; crossing = FLOPs / training wall seconds at which the held-out "
        "curve first reaches scratch's final loss of the same seed; equal final loss = FLOPs "
        "scratch needs for the arm's final loss, interpolated between scratch budgets)",
        "",
        _table(_COMPARISON_HEADERS, [_comparison_row(a, c) for a, c in s["main"].items()]),
        "",
        "**Final loss by seed** at the preset's budget (large held-out set)",
        "",
        _table(
            ["arm", *[f"seed {sd}" for sd in m["seeds"]]],
            [
                [a, *[st.fmt(losses.get(str(sd)), ".4f") for sd in m["seeds"]]]
                for a, losses in s["per_seed"].items()
            ],
        ),
        "",
        "**Budget sweep** (each budget its own schedule; target = scratch's final loss at that "
        "budget and seed)",
        "",
        _table(
            ["arm @ budget", *_COMPARISON_HEADERS[1:]],
            [_comparison_row(k, c) for k, c in s["sweep"].items()],
        ),
        "",
        f"Noise: standard error of one final evaluation "
        f"{st.fmt(s['noise']['final_eval_se_mean'], '.4f')} (over evaluation batches, which differ "
        "in content); of a paired difference between two runs on the same batches "
        f"{st.fmt(s['noise']['paired_difference_se_mean'], '.4f')} "
        f"({s['noise']['paired_comparisons']} pairs with per-batch losses); scratch seed-to-seed "
        "sd of the final loss by budget: "
        + ", ".join(f"{k} {st.fmt(v, '.4f')}" for k, v in s["noise"]["scratch_seed_sd"].items()),
    ]
    return "\n".join(out) + "\n"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    from progtune.analysis.render import markdown

    return markdown([("table", headers, rows, [False] * len(headers))]).rstrip("\n")


_COMPARISON_HEADERS = [
    "arm",
    "reached",
    "FLOPs-to-target saving",
    "wall-to-target saving",
    "wall/FLOPs",
    "run FLOPs / scratch",
    "final loss",
    "Δ loss vs scratch",
    "equal-final-loss saving",
]


def _comparison_row(label: str, c: dict) -> list[str]:
    return [
        label,
        f"{c['reached']}/{c['n']}",
        st.fmt_interval(c["crossing_flops_saving"]),
        st.fmt_interval(c["crossing_wall_saving"]),
        st.fmt(c["wall_over_flops_saving"], ".2f"),
        st.fmt(c["total_flops_ratio"]["mean"], ".3f"),
        st.fmt_interval(c["final_loss"], pct=False),
        st.fmt_interval(c["delta_loss_vs_scratch"], pct=False),
        st.fmt_interval(c["equal_loss_flops_saving"]) + _kinds(c),
    ]


def _kinds(c: dict) -> str:
    k = c["equal_loss_kinds"]
    extra = [
        f"{n} beyond the largest scratch budget: a lower bound" for n in [k.get("beyond")] if n
    ]
    extra += [f"{n} above the smallest one's loss: an upper bound" for n in [k.get("short")] if n]
    return f"; {', '.join(extra)}" if extra else ""
