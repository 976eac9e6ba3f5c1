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
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study_stats as st

from progtune.atomic import write_text_atomic

# What every run of the study shares on top of the preset: a fixed held-out set of 96 windows
# evaluated 12 times (crossings), one thread per worker, a checkpoint only at the end.
STUDY_OVERRIDES = {
    "eval.points": 12,
    "eval.max_tokens": 12_288,
    "runtime.threads": 1,
    "runtime.checkpoint_every": 0,
}
REFERENCE_WARMUP = 0.025
ARM_ORDER = ["searched", "apollo-ref", "apollo", "interp-none", "stacking-none", "apollo-reset",
             "apollo-rewarm", "apollo-half-lr"]  # fmt: skip
# Settings that change what a finished run means: a study folder keeps them (budgets, seeds,
# sweep arms and workers may change: they only add runs).
_SAME_STUDY = ("preset", "overrides", "lrs", "warmups", "final_eval_tokens", "searched")
# Knobs a searched configuration does not bring along: the study sets them.
_STUDY_KNOBS = ("seed", "budget.tokens", "data.cache_dir")


# ---------------------------------------------------------------------------- the runs
def apollo_stages(n_layers: int) -> tuple[list[int], list[float]]:
    """The short-run reference schedule 1 -> L/4 -> L/2 -> L at 10/20/50 %, scaled to L layers;
    a stage whose block count equals the previous one's is merged into it."""
    ks, bounds = [1], []
    for k, b in zip(
        (max(1, n_layers // 4), max(1, n_layers // 2), n_layers), (0.1, 0.2, 0.5), strict=False
    ):
        if k > ks[-1]:
            ks.append(k)
            bounds.append(b)
    return ks, bounds


def arms(n_layers: int, best: dict, user: dict, searched: dict | None) -> dict[str, dict]:
    """Arm name -> overrides (on top of the preset, the study settings and the user's KEY=VALUE)."""
    ks, bounds = apollo_stages(n_layers)
    stages = {
        "stages.unique_layers": user.get("stages.unique_layers", ks),
        "stages.boundaries": user.get("stages.boundaries", bounds),
    }
    lr = {"lr.peak": best["lr.peak"], "lr.warmup_fraction": best["lr.warmup_fraction"]}
    apollo = {**stages, **lr, "sampling.strategy": "lvps", "growth.operator": "interpolation"}
    out = {
        "scratch": scratch_overrides(n_layers, best["lr.peak"], best["lr.warmup_fraction"]),
        "apollo-ref": {**apollo, "lr.warmup_fraction": REFERENCE_WARMUP},
        "apollo": apollo,
        "stacking-none": {**apollo, "sampling.strategy": "none", "growth.operator": "stacking"},
        "interp-none": {**apollo, "sampling.strategy": "none"},
        "apollo-reset": {**apollo, "growth.optimizer_state": "reset"},
        "apollo-rewarm": {**apollo, "lr.rewarmup_fraction": 0.05},
        "apollo-half-lr": {**apollo, "lr.peak": best["lr.peak"] / 2},
    }
    if best["lr.warmup_fraction"] == REFERENCE_WARMUP:
        del out["apollo"]  # identical to apollo-ref
    if searched is not None:
        out["searched"] = dict(searched)
    return out


def scratch_overrides(n_layers: int, lr: float, warmup: float) -> dict:
    return {
        "stages.unique_layers": [n_layers],
        "stages.boundaries": [],
        "sampling.strategy": "full",
        "lr.peak": lr,
        "lr.warmup_fraction": warmup,
    }


def searched_config(experiment: str, base_flat: dict) -> tuple[dict, str]:
    """The best configuration of a search experiment as overrides, and a one-line description."""
    from progtune.confirm_cli import _config_key, top_configs
    from progtune.errors import ProgtuneError
    from progtune.results import read_trials

    path = Path(experiment) / "trials.parquet"
    if not path.is_file():
        raise ProgtuneError(f"--searched {experiment}: no trials.parquet; pass a search folder")
    best = top_configs(read_trials(path), 1)
    if not best:
        raise ProgtuneError(f"--searched {experiment} has no completed search trial")
    knobs = {k: v for k, v in _config_key(best[0]) if k not in _STUDY_KNOBS}
    knobs = {k: list(v) if isinstance(v, tuple) else v for k, v in knobs.items()}
    for k, v in knobs.items():
        want = base_flat.get(k)
        want = list(want) if isinstance(want, tuple) else want
        if (k.startswith("model.") or k.startswith("data.")) and v != want:
            raise ProgtuneError(
                f"--searched {experiment} trained {k}={v}, the study uses {want}; "
                "run the study with the search's preset and data"
            )
    for k in list(knobs):
        if k.startswith("eval.") or k.startswith("runtime."):
            del knobs[k]  # the study's evaluation and runtime apply
    desc = ", ".join(
        f"{k}={_show(v)}"
        for k, v in knobs.items()
        if k.startswith(("stages.", "sampling.strategy", "growth.", "lr.peak", "lr.warmup"))
        or k == "lr.rewarmup_fraction"
    )
    return knobs, desc


def _show(value: Any) -> str:
    from progtune.config import list_text

    if isinstance(value, list):
        return list_text(tuple(value))
    return format(value, ".4g") if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------- one run (worker)
_DATA: dict[str, Any] = {}


def final_eval(cfg, data, checkpoint: Path, max_tokens: int) -> dict:
    """Full-depth loss of the final weights on `max_tokens` held-out tokens, with the standard
    error of the mean over evaluation batches (the same windows and masks for every run)."""
    import numpy as np

    from progtune.config import with_overrides
    from progtune.model import ProgressiveLM
    from progtune.train import (
        _val_windows,
        evaluate_batches,
        load_checkpoint,
        pick_device,
        use_bf16,
    )

    big = with_overrides(cfg, {"eval.max_tokens": max_tokens})
    payload = load_checkpoint(checkpoint)
    device = pick_device(cfg)
    model = ProgressiveLM(
        cfg.model, data.vocab_size, payload["k"], cfg.growth.operator, data.eos_id, data.pad_id
    ).to(device)
    model.load_state_dict(payload["model"])
    t0 = time.perf_counter()
    losses, weights = evaluate_batches(
        model, big, _val_windows(big, data.val), data, device, use_bf16(cfg, device)
    )
    w = np.asarray(weights, dtype=np.float64)
    v = np.asarray(losses)
    mean = float((v * w).sum() / w.sum())
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None
    return {
        "loss": mean,
        "se": se,
        "batch_losses": losses,  # same batches in every run: paired differences (study_stats)
        "batch_weights": weights,
        "tokens": int(w.sum()),
        "batches": len(v),
        "wall_s": time.perf_counter() - t0,
    }


def run_one(job: dict) -> dict:
    """Train one run of the study and write its record atomically; returns the record."""
    import torch

    from progtune.config import resolve
    from progtune.data import prepare_data
    from progtune.train import train

    cfg = resolve(job["preset"], overrides=job["overrides"])
    torch.set_num_threads(cfg.runtime.threads or 1)
    key = json.dumps(dataclasses.asdict(cfg.data))
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = prepare_data(cfg.data)
    data = _DATA[key]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pt-study-") as tmp:
        ckpt = Path(tmp) / "checkpoint"
        result = train(cfg, data=data, checkpoint_dir=ckpt)
        run_wall = time.perf_counter() - t0
        big = (
            final_eval(cfg, data, ckpt, job["final_eval_tokens"])
            if result.status == "completed" and (ckpt / "state.pt").is_file()
            else None
        )
    record = {
        **{k: job[k] for k in ("id", "arm", "seed", "budget_mult", "phase")},
        "overrides": job["overrides"],
        "status": result.status,
        "final_eval_loss": result.final_eval_loss,
        "final": big,
        "curve": result.curve,
        "run_wall_s": run_wall,
        **result.totals(),
    }
    write_json(Path(job["path"]), record)
    return record


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, default=float))


# ---------------------------------------------------------------------------- scheduling
class Study:
    def __init__(self, args: argparse.Namespace, user: dict, base_flat: dict):
        self.args, self.user, self.base_flat = args, user, base_flat
        self.out = Path(args.out)
        self.runs_dir = self.out / "runs"
        self.budget = int(base_flat["budget.tokens"])
        self.n_layers = int(base_flat["model.n_layers"])

    def job(self, arm: str, overrides: dict, seed: int, mult: float, phase: str) -> dict:
        run_id = f"{arm}@{mult:g}x-s{seed}"
        full = {
            **STUDY_OVERRIDES,
            **self.user,
            **overrides,
            "seed": seed,
            "budget.tokens": round(self.budget * mult),
        }
        return {
            "id": run_id,
            "arm": arm,
            "seed": seed,
            "budget_mult": mult,
            "phase": phase,
            "preset": self.args.preset,
            "overrides": full,
            "final_eval_tokens": self.args.final_eval_tokens,
            "path": str(self.runs_dir / f"{run_id}.json"),
        }

    def grid(self) -> list[dict]:
        seed = self.args.seeds[0]
        return [
            self.job(
                grid_arm(lr, w), scratch_overrides(self.n_layers, lr, w), seed, 1.0, "lr-sweep"
            )
            for w in self.args.warmups
            for lr in self.args.lrs
        ]

    def rest(self, best: dict, searched: dict | None) -> list[dict]:
        """Everything after the LR sweep, most important first (a cut study keeps the core)."""
        table = arms(self.n_layers, best, self.user, searched)
        sweep_arms = [a for a in self.args.sweep_arms if a in table]
        seeds, sweep_seeds = self.args.seeds, self.args.seeds[: self.args.sweep_seeds]
        jobs = [self.job("scratch", table["scratch"], s, 1.0, "arms") for s in seeds]
        chosen = [
            a for a in ARM_ORDER if a in table and (not self.args.arms or a in self.args.arms)
        ]
        jobs += [self.job(a, table[a], s, 1.0, "arms") for s in seeds for a in chosen]
        for mult in sorted({*self.args.budgets, *self.args.scratch_budgets}):
            jobs += [self.job("scratch", table["scratch"], s, mult, "budgets") for s in sweep_seeds]
            if mult in self.args.budgets:
                jobs += [
                    self.job(a, table[a], s, mult, "budgets")
                    for a in sweep_arms
                    for s in sweep_seeds
                ]
        return jobs

    def pending(self, jobs: list[dict]) -> list[dict]:
        return [j for j in jobs if not Path(j["path"]).is_file()]

    def execute(self, jobs: list[dict], started: float) -> None:
        todo = self.pending(jobs)
        if not todo:
            return
        print(
            f"[{time.perf_counter() - started:7.0f}s] {len(todo)} runs to do "
            f"({len(jobs) - len(todo)} already done)",
            flush=True,
        )
        import multiprocessing as mp

        with ProcessPoolExecutor(self.args.workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(run_one, j): j for j in todo}
            for fut in as_completed(futures):
                job = futures[fut]
                rec = fut.result()
                loss = (rec.get("final") or {}).get("loss")
                print(
                    f"[{time.perf_counter() - started:7.0f}s] {job['id']}: {rec['status']}, "
                    f"final loss {st.fmt(loss, '.4f')}, {rec['total_flops']:.3g} FLOPs, "
                    f"train {rec['total_wall_s']:.0f}s of {rec['run_wall_s']:.0f}s",
                    flush=True,
                )


def grid_arm(lr: float, warmup: float) -> str:
    return f"scratch-lr{lr:g}-w{warmup:g}"


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


# ---------------------------------------------------------------------------- the report
def analyse(runs: list[dict], meta: dict) -> tuple[dict, str]:
    """Summary dict and markdown from the run records."""
    # The product's crossing rule (any column) and saving convention.
    from progtune.results import flops_to_target, saving

    by = {(r["arm"], r["budget_mult"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs if r["arm"] == "scratch"})
    mults = sorted({r["budget_mult"] for r in runs if r["arm"] == "scratch"})

    def scratch_points(seed: int) -> list[tuple[float, float]]:
        return [
            (by[("scratch", m, seed)]["total_flops"], final_loss(by[("scratch", m, seed)]))
            for m in mults
            if ("scratch", m, seed) in by
        ]

    def compare(arm: str, mult: float) -> dict:
        cross_f, cross_w, d_loss, eq, kinds, total_ratio = [], [], [], [], [], []
        reached = n = 0
        losses = []
        for seed in seeds:
            ref, rec = by.get(("scratch", mult, seed)), by.get((arm, mult, seed))
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
                f_eq, kind = st.equal_loss_flops(scratch_points(seed), final_loss(rec))
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

    present = {r["arm"] for r in runs if r["phase"] == "arms"}
    arm_names = [a for a in ARM_ORDER if a in present] + sorted(present - set(ARM_ORDER))
    main = {a: compare(a, 1.0) for a in ["scratch", *arm_names] if a != "scratch" or seeds}
    sweep_arms = sorted(
        {r["arm"] for r in runs if r["phase"] == "budgets" and r["arm"] != "scratch"}
    )
    sweep = {
        f"{a}@{m:g}x": compare(a, m)
        for a in sweep_arms
        for m in sorted({1.0, *mults})
        if any((a, m, s) in by for s in seeds)
    }
    ses = [r["final"]["se"] for r in runs if (r.get("final") or {}).get("se") is not None]
    paired = [
        st.paired_se(by[(a, m, sd)]["final"], by[("scratch", m, sd)]["final"])
        for (a, m, sd) in by
        if not a.startswith("scratch") and ("scratch", m, sd) in by
    ]
    paired = [x for x in paired if x is not None]
    noise = {
        "final_eval_se_mean": sum(ses) / len(ses) if ses else None,
        "paired_difference_se_mean": sum(paired) / len(paired) if paired else None,
        "paired_comparisons": len(paired),
        "scratch_seed_sd": {
            f"{m:g}x": st.mean_interval(
                [final_loss(by[("scratch", m, s)]) for s in seeds if ("scratch", m, s) in by]
            )["sd"]
            for m in mults
        },
    }
    grid = [
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
    wall = {
        "train_s": sum(r["total_wall_s"] for r in runs),
        "eval_s": sum(r["eval_wall_s"] + (r.get("final") or {}).get("wall_s", 0.0) for r in runs),
        "run_s": sum(r["run_wall_s"] for r in runs),
    }
    per_seed = {
        a: {str(sd): final_loss(by[(a, 1.0, sd)]) for sd in seeds if (a, 1.0, sd) in by}
        for a in ["scratch", *arm_names]
    }
    summary = {
        "meta": meta,
        "per_seed": per_seed,
        "lr_sweep": grid,
        "main": main,
        "sweep": sweep,
        "noise": noise,
        "wall": wall,
        "runs": len(runs),
    }
    return summary, render(summary)


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


# ---------------------------------------------------------------------------- main
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
    from progtune.config import flatten, parse_assignments, resolve
    from progtune.errors import ProgtuneError

    args = parse_args(argv)
    started = time.perf_counter()
    try:
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
        if not args.report_only:
            from progtune.data import prepare_data

            prepare_data(base.data)  # once, before the workers read the cache
            write_json(settings_file, meta["settings"])
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
