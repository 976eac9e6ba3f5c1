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
