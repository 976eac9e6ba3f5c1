"""Runs of the Apollo-vs-scratch study: one run in a worker, the job list, the pool, the records.

Used by bench/apollo_vs_scratch.py; torch and progtune's training load only in the workers.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import study_stats as st
from study_arms import ARM_ORDER, STUDY_OVERRIDES, arms, grid_arm, scratch_overrides

from progtune.atomic import write_text_atomic


@functools.lru_cache(maxsize=1)
def _prepared_data(data_cfg: Any) -> Any:
    """The worker's prepared corpus, kept for its next run on the same data settings."""
    from progtune.data import prepare_data

    return prepare_data(data_cfg)


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
    from progtune.train import train

    cfg = resolve(job["preset"], overrides=job["overrides"])
    torch.set_num_threads(cfg.runtime.threads or 1)
    data = _prepared_data(cfg.data)
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


class Study:
    """The study's jobs (one run each, named by arm, budget and seed) and their execution."""

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
