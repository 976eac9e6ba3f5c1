"""Token windows for training and evaluation, and the model inputs and targets made from them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from progtune.config import Config
from progtune.errors import ProgtuneError


class TrainingWindows:
    """Windows of seq_len + 1 tokens, a seeded permutation per epoch; position = windows taken."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int):
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.n = (len(tokens) - 1) // seq_len
        if self.n < 1:
            raise ProgtuneError(
                f"the training split has {len(tokens)} tokens, fewer than one window of "
                f"model.seq_len={seq_len}; use a larger data.corpus or a shorter model.seq_len"
            )
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def take(self, start: int, count: int) -> torch.Tensor:
        """Windows number `start` .. `start + count - 1` of the run, shape (count, seq_len + 1)."""
        rows = []
        for i in range(start, start + count):
            epoch, pos = divmod(i, self.n)
            if epoch != self._epoch:
                self._epoch = epoch
                self._perm = np.random.default_rng([self.seed, epoch, 0xDA7A]).permutation(self.n)
            off = int(self._perm[pos]) * self.seq_len
            rows.append(self.tokens[off : off + self.seq_len + 1])
        return torch.from_numpy(np.stack(rows).astype(np.int64))


def val_windows(cfg: Config, val: np.ndarray) -> torch.Tensor:
    """The fixed evaluation windows (seq_len + 1 tokens), spread evenly over the held-out split."""
    seq = cfg.model.seq_len
    n_all = (len(val) - 1) // seq
    if n_all < 1:
        raise ProgtuneError(
            f"the validation split has {len(val)} tokens, fewer than one window of "
            f"model.seq_len={seq}; lower data.val_every or use a larger data.corpus"
        )
    n = n_all if cfg.eval.max_tokens == 0 else max(1, min(n_all, cfg.eval.max_tokens // seq))
    starts = np.linspace(0, n_all - 1, n).astype(np.int64) * seq  # spread over the whole split
    return torch.from_numpy(np.stack([val[s : s + seq + 1] for s in starts]).astype(np.int64))


def mask_for_mlm(
    window: torch.Tensor, rng: np.random.Generator, fraction: float, mask_id: int, vocab: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: `fraction` of positions scored; 80 % of them [MASK], 10 % random, 10 % kept."""
    x = window.clone()
    u = torch.from_numpy(rng.random(x.shape))
    scored = u < fraction
    scored[..., 0] |= ~scored.any(dim=-1)  # at least one scored position per row
    targets = torch.where(scored, x, torch.full_like(x, -100))
    choice = torch.from_numpy(rng.random(x.shape))
    random_tokens = torch.from_numpy(rng.integers(0, vocab, x.shape))
    x = torch.where(scored & (choice < 0.8), torch.full_like(x, mask_id), x)
    x = torch.where(scored & (choice >= 0.8) & (choice < 0.9), random_tokens, x)
    return x, targets


def model_inputs(
    cfg: Config, window: torch.Tensor, rng: np.random.Generator, data: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of a batch of windows: next-token for causal models, masked for BERT
    (`rng` draws the masks; `data` gives the mask id and vocabulary size)."""
    if cfg.model.arch == "bert":
        return mask_for_mlm(
            window[:, :-1], rng, cfg.model.mask_fraction, data.mask_id, data.vocab_size
        )
    return window[:, :-1], window[:, 1:]


def planned_epochs(budget_tokens: int, train_tokens: int, seq_len: int) -> float:
    """Passes over the training split that `budget_tokens` make (whole windows of seq_len)."""
    per_epoch = max(1, (train_tokens - 1) // seq_len) * seq_len
    return budget_tokens / per_epoch


def epochs_line(cfg: Config, train_tokens: int) -> str:
    """One line: the budget in epochs of the training split (says when the corpus repeats)."""
    epochs = planned_epochs(cfg.budget.tokens, train_tokens, cfg.model.seq_len)
    line = (
        f"budget: {cfg.budget.tokens:,} training tokens = {epochs:.2f} epochs of the "
        f"{train_tokens:,}-token training split"
    )
    if epochs > 1:
        line += " (the corpus repeats: add data or lower budget.tokens to avoid it)"
    return line
