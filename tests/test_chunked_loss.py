"""The chunked LM loss: same loss and gradients as full-logit cross-entropy, without the logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from progtune.chunked_loss import chunked_cross_entropy
from progtune.config import ModelConfig
from progtune.model import ProgressiveLM

ARCHS = ("gpt2", "llama", "bert")
VOCAB = 1009  # rows x VOCAB logits are the largest tensor of the unchunked loss
SEQ = 16
CHUNK = 7  # 48 rows (BERT: its scored rows) split into chunks of 7, the last one short
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_lm(arch: str) -> ProgressiveLM:
    torch.manual_seed(0)
    m = ModelConfig(arch=arch, n_layers=3, d_model=32, n_heads=2, seq_len=SEQ)
    lm = ProgressiveLM(m, VOCAB, 2, "interpolation")
    lm.set_depth(3)  # k = 2 blocks over 3 positions: a shared block's gradient sums over both
    lm.loss_chunk_rows = CHUNK
    return lm


def batch(arch: str, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(3, VOCAB, (n, SEQ), generator=g)
    y = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    if arch == "bert":
        scored = torch.rand(n, SEQ, generator=g) < 0.5
        return x, torch.where(scored, x, torch.full_like(x, -100))
    return x, y


def full_logit_loss(lm: ProgressiveLM, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss as progtune computed it before chunking: full logits, upcast, one cross-entropy."""
    if lm.m.arch == "bert":
        hidden = lm.hf.bert(input_ids=x).last_hidden_state
        scored = y != -100
        return F.cross_entropy(lm.hf.cls(hidden[scored]).float(), y[scored])
    logits = lm.hf(input_ids=x).logits
    return F.cross_entropy(logits.float().view(-1, VOCAB), y.reshape(-1))


def loss_and_grads(lm: ProgressiveLM, loss_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    lm.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {
        n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_loss_and_every_gradient_equal_the_full_logit_loss(arch: str) -> None:
    lm = make_lm(arch).train()
    x, y = batch(arch)
    chunked, chunked_grads = loss_and_grads(lm, lambda: lm(x, y).value)
    full, full_grads = loss_and_grads(lm, lambda: full_logit_loss(lm, x, y))
    rows = int((y != -100).sum())
    assert rows > 2 * CHUNK and rows % CHUNK  # several chunks, the last one short
    torch.testing.assert_close(chunked, full, rtol=1e-6, atol=1e-6)
    assert chunked_grads.keys() == full_grads.keys()
    assert len(chunked_grads) == len(list(lm.parameters()))  # head, embeddings, every block
    for name, grad in full_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)


def test_unscored_rows_and_no_grad_match_cross_entropy() -> None:
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(30, 8, generator=g, requires_grad=True)
    weight = torch.randn(50, 8, generator=g, requires_grad=True)
    bias = torch.randn(50, generator=g, requires_grad=True)
    targets = torch.randint(0, 50, (30,), generator=g)
    targets[::4] = -100  # unscored rows do not count in the mean and get no gradient
    ours = chunked_cross_entropy(hidden, weight, bias, targets, chunk_rows=4)
    ours_grads = torch.autograd.grad(ours, (hidden, weight, bias))
    theirs = F.cross_entropy(F.linear(hidden, weight, bias), targets)
    their_grads = torch.autograd.grad(theirs, (hidden, weight, bias))
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(ours_grads, their_grads, strict=True):
        torch.testing.assert_close(a, b)
    assert not ours_grads[0][::4].any()
    with torch.no_grad():  # evaluation: no gradient work, same value
        torch.testing.assert_close(chunked_cross_entropy(hidden, weight, bias, targets, 4), theirs)


def test_bf16_autocast_matches_the_full_logit_loss_within_bf16_rounding() -> None:
    lm = make_lm("gpt2").train()
    x, y = batch("gpt2")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked, chunked_grads = loss_and_grads(lm, lambda: lm(x, y).value)
        full, full_grads = loss_and_grads(lm, lambda: full_logit_loss(lm, x, y))
    torch.testing.assert_close(chunked, full, rtol=1e-3, atol=1e-3)
    for name, grad in full_grads.items():
        scale = grad.abs().max().item()
        torch.testing.assert_close(chunked_grads[name], grad, rtol=0.05, atol=0.02 * scale)


def test_backward_keeps_no_logits() -> None:
    """Tensors saved for backward: the unchunked loss keeps [rows, V] logits, the chunked none."""
    lm = make_lm("gpt2").train()
    x, y = batch("gpt2")
    rows_by_vocab = x.numel() * VOCAB

    def largest_saved(loss_fn) -> int:
        sizes = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss_fn()
        return max(sizes)

    assert largest_saved(lambda: full_logit_loss(lm, x, y)) >= rows_by_vocab
    assert largest_saved(lambda: lm(x, y).value) < rows_by_vocab
