"""Cross-entropy of an LM head computed in row chunks, so full [rows, vocab] logits never exist."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows (scored positions) per chunk. 4096 rows bound one chunk's fp32 logits at 4096 x V x 4 bytes
# (0.5 GiB at V = 32k, 0.8 GiB at GPT-2's 50k) however large the micro-batch, while each chunk's
# head matmul (2 x 4096 x h x V FLOPs: 0.2 TFLOP at h = 768, V = 32k) still keeps a GPU's matmul
# units busy; smaller chunks would add kernel launches, larger ones only memory.
LOSS_CHUNK_ROWS = 4096
IGNORE_INDEX = -100  # the target of an unscored position (F.cross_entropy's default)


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk_rows: int = LOSS_CHUNK_ROWS,
) -> torch.Tensor:
    """Mean cross-entropy of the logits `hidden @ weight.T + bias` against `targets` (-100 =
    unscored), equal to `F.cross_entropy(logits.float(), targets)` within fp32 rounding.

    Each chunk's logits are computed in the autocast dtype (as `F.linear` under autocast would),
    upcast to fp32 and reduced; with gradients on, the chunk's gradients for `hidden`, `weight`
    and `bias` are computed right there from the same fp32 softmax, so backward keeps no logits and
    recomputes nothing (the same matmul FLOPs as the unchunked loss: forward 2hV, backward 4hV).
    """
    hidden = hidden.reshape(-1, hidden.size(-1))
    targets = targets.reshape(-1)
    dtype = _compute_dtype(hidden)
    inputs = (hidden, weight) if bias is None else (hidden, weight, bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _FusedHeadLoss.apply(hidden, weight, bias, targets, chunk_rows, dtype)
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        w_low, b_low = _cast(weight, dtype), _cast(bias, dtype)
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.size(0), chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits32 = F.linear(hidden[rows].to(dtype), w_low, b_low).float()
            total += _row_losses(logits32, targets[rows])[0].sum()
            del logits32  # the next chunk's logits must not meet this one's
        return total / (targets != IGNORE_INDEX).sum()


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype `F.linear` would run in here: autocast's when it is on, else the input's."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def _row_losses(
    logits32: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss per row, 0 where unscored; row sums of exp(logit - row max); scored mask).

    Works in place: afterwards `logits32` holds exp(logit - row max), so that scaling it by the
    sums gives the softmax without a second [rows, V] tensor.
    """
    scored = targets != IGNORE_INDEX
    index = targets.clamp_min(0).unsqueeze(1)  # unscored rows gather any column, then are zeroed
    target_logit = logits32.gather(1, index).squeeze(1)
    row_max = logits32.amax(1, keepdim=True)
    sums = logits32.sub_(row_max).exp_().sum(1)
    log_sum_exp = sums.log() + row_max.squeeze(1)
    return torch.where(scored, log_sum_exp - target_logit, 0.0), sums, scored


def _chunk_loss_and_grad(
    h_low: torch.Tensor,
    w_low: torch.Tensor,
    b_low: torch.Tensor | None,
    targets: torch.Tensor,
    count: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss of the chunk's rows, d(mean loss)/d(logits) in fp32 for them): the gradient
    (softmax - one_hot(target)) / count, 0 on unscored rows, written over the logits in place."""
    logits32 = F.linear(h_low, w_low, b_low).float()
    losses, sums, scored = _row_losses(logits32, targets)
    weight = (scored / count).unsqueeze(1)  # each scored row's share of the mean
    grad_logits = logits32.mul_(weight / sums.unsqueeze(1))  # softmax x share, one pass
    grad_logits.scatter_add_(1, targets.clamp_min(0).unsqueeze(1), -weight)
    return losses.sum(), grad_logits


class _FusedHeadLoss(torch.autograd.Function):
    """Forward computes the loss and, chunk by chunk, its gradients; backward only scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows, dtype):
        with torch.autocast(hidden.device.type, enabled=False):
            w_low, b_low = _cast(weight, dtype), _cast(bias, dtype)
            count = (targets != IGNORE_INDEX).sum()
            grad_hidden = torch.empty_like(hidden)
            grad_weight = torch.zeros_like(weight, dtype=torch.float32)
            grad_bias = None if bias is None else torch.zeros_like(bias, dtype=torch.float32)
            total = hidden.new_zeros((), dtype=torch.float32)
            for start in range(0, hidden.size(0), chunk_rows):
                rows = slice(start, start + chunk_rows)
                h_low = hidden[rows].to(dtype)
                loss_sum, grad_logits = _chunk_loss_and_grad(
                    h_low, w_low, b_low, targets[rows], count
                )
                total += loss_sum
                if grad_bias is not None:
                    grad_bias += grad_logits.sum(0)
                grad_low = grad_logits.to(dtype)
                del grad_logits  # a second [rows, V] fp32 tensor must not outlive this chunk
                grad_hidden[rows] = grad_low @ w_low
                grad_weight += (grad_low.t() @ h_low).float()
                del grad_low  # nor may it live on while the next chunk's logits are computed
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        need = ctx.needs_input_grad
        return (
            grad_hidden * grad_loss if need[0] else None,
            grad_weight * grad_loss if need[1] else None,
            grad_bias * grad_loss if need[2] and grad_bias is not None else None,
            None,
            None,
            None,
        )
