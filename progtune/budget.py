"""Planned compute of a config before it runs: FLOPs per stage at the sampler's expected depth."""

from __future__ import annotations

import itertools

from progtune.config import Config
from progtune.model import flops_per_token
from progtune.sampling import expected_depth


def stage_tokens(cfg: Config) -> list[int]:
    """Training tokens spent in each stage (boundaries are fractions of the budget)."""
    edges = [0.0, *cfg.stages.boundaries, 1.0]
    return [round((b - a) * cfg.budget.tokens) for a, b in itertools.pairwise(edges)]


def planned_flops(cfg: Config, vocab_size: int) -> float:
    """Expected training FLOPs of the whole run (exact in expectation: FLOPs are linear in d)."""
    total = 0.0
    for k, tokens in zip(cfg.stages.unique_layers, stage_tokens(cfg), strict=True):
        depth = expected_depth(k, cfg.model.n_layers, cfg.sampling)
        total += tokens * flops_per_token(cfg.model, vocab_size, depth)
    return total


def asha_rungs(reference: Config, vocab_size: int) -> list[float]:
    """ASHA's milestones in FLOPs: 1/8, 1/4, 1/2 and all of a scratch budget (`--scheduler asha`
    counts them in cumulative FLOPs, asha-after-growth after a trial's last growth)."""
    full = planned_flops(reference, vocab_size)
    return [full / 8, full / 4, full / 2, full]


def stage_start_tokens(cfg: Config) -> list[int]:
    """Tokens trained before each stage begins, on the run's step grid (planned_growth_steps)."""
    return [0, *(g * _step_tokens(cfg) for g in planned_growth_steps(cfg))]


def planned_steps(cfg: Config) -> int:
    """Optimizer steps of the run: budget.tokens // tokens per optimizer step (train.Plan)."""
    return cfg.budget.tokens // _step_tokens(cfg)


def planned_growth_steps(cfg: Config) -> list[int]:
    """The optimizer step after which each stage s+1 begins: round(boundary x steps) (train.Plan
    checks they are distinct and inside the run)."""
    total = planned_steps(cfg)
    return [round(x * total) for x in cfg.stages.boundaries]


def _step_tokens(cfg: Config) -> int:
    return cfg.budget.batch_size * cfg.model.seq_len * cfg.budget.grad_accum


def last_stage_start_flops(cfg: Config, vocab_size: int) -> float:
    """Planned FLOPs spent before the last stage begins (0 for a single-stage run): the clock
    origin of `--scheduler asha-after-growth`."""
    starts = stage_start_tokens(cfg)
    total = 0.0
    for k, (a, b) in zip(cfg.stages.unique_layers, itertools.pairwise(starts), strict=False):
        depth = expected_depth(k, cfg.model.n_layers, cfg.sampling)
        total += (b - a) * flops_per_token(cfg.model, vocab_size, depth)
    return total
