"""Expected peak memory per GPU of a run, and the refusal of a micro-batch that cannot fit.

    plan = plan_memory(cfg, vocab_size, workers=8)      # bytes by kind, for one rank
    check_fits(cfg, vocab_size, workers, gpu_bytes)     # ConfigError when it cannot fit

The plan counts, for one rank at the last stage (all L blocks unique) and full depth:
- fp32 parameters, their fp32 gradients (plus DDP's bucket copy of them with workers > 1) and
  AdamW's two fp32 moments and step counters: exact, from the architecture's tensor shapes;
- autocast's 16-bit copies of the block weights (kept for backward while a micro-batch runs);
- activations: the tensors autograd saves for backward, per token and layer, derived below from
  what the transformers blocks run (SDPA's flash/efficient kernels: no [s, s] attention matrix);
- the loss's working set: one chunk of logits (chunked_loss.py) and the head's fp32 gradient;
- a margin: backward's working set (about one layer's saved tensors), allocator fragmentation and
  the CUDA context, which lives outside PyTorch's allocator.
tests/test_memory_plan.py checks parameter and optimizer bytes exactly against built models and
the activation estimate against the bytes that saved-tensor hooks see on tiny models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from progtune.chunked_loss import LOSS_CHUNK_ROWS
from progtune.config import Config, ModelConfig
from progtune.errors import ConfigError
from progtune.model import d_ff

GIB = 2**30
# The card a dry run plans against when none is visible: the H100 80GB (SXM or PCIe).
REFERENCE_GPU = ("an 80 GiB H100 (reference card, no GPU visible)", 80 * GIB)
CONTEXT_BYTES = GIB  # CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers: ~0.5-1 GiB per process
FRAGMENTATION = 0.10  # caching-allocator blocks reserved but too small or split for a new request
FP32, INDEX = 4, 8  # bytes of an fp32 value and of an int64 token index


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one rank (one GPU) holds at its peak, by kind."""

    micro_batch: int  # sequences per worker per micro-batch
    workers: int
    precision: str  # bf16 | fp16 | fp32: the dtype matmuls and activations run in
    parameter_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    weight_copy_bytes: int
    activation_bytes: int
    loss_bytes: int
    margin_bytes: int

    @property
    def total_bytes(self) -> int:
        return (
            self.parameter_bytes
            + self.gradient_bytes
            + self.optimizer_bytes
            + self.weight_copy_bytes
            + self.activation_bytes
            + self.loss_bytes
            + self.margin_bytes
        )

    def breakdown(self) -> str:
        """The parts in GiB, for the dry-run line."""
        state = self.parameter_bytes + self.gradient_bytes + self.optimizer_bytes
        return (
            f"{self.precision}; weights+grads+AdamW {state / GIB:.1f}, 16-bit weight copies "
            f"{self.weight_copy_bytes / GIB:.1f}, activations {self.activation_bytes / GIB:.1f}, "
            f"loss chunk {self.loss_bytes / GIB:.1f}, margin {self.margin_bytes / GIB:.1f} GiB"
        )


# ---------------------------------------------------------------------------- exact state
def parameter_shapes(m: ModelConfig, vocab_size: int) -> tuple[int, int]:
    """(parameters, parameter tensors) of the L-block model: every block plus embeddings and
    head, tied tensors once (GPT-2's head and BERT's decoder share the token embedding)."""
    h, f, n_pos = m.d_model, d_ff(m), m.seq_len
    if m.arch == "llama":
        h_kv = (m.n_kv_heads or m.n_heads) * (h // m.n_heads)
        block = 2 * h * h + 2 * h * h_kv + 3 * h * f + 2 * h, 9  # q k v o, gate up down, 2 norms
        rest = 2 * vocab_size * h + h, 3  # embedding, final norm, untied head
    elif m.arch == "gpt2":
        block = 4 * h * h + 2 * h * f + 9 * h + f, 12  # weights + biases, 2 LayerNorms
        rest = (vocab_size + n_pos) * h + 2 * h, 4  # token + position embeddings, final LayerNorm
    else:  # bert: 2 token types; the MLM head's transform, LayerNorm and output bias
        block = 4 * h * h + 2 * h * f + 9 * h + f, 16
        rest = (vocab_size + n_pos + 2) * h + 2 * h + (h * h + 3 * h) + vocab_size, 10
    return m.n_layers * block[0] + rest[0], m.n_layers * block[1] + rest[1]


def optimizer_bytes(m: ModelConfig, vocab_size: int) -> int:
    """AdamW's state: exp_avg and exp_avg_sq in fp32 per parameter, one fp32 step per tensor."""
    params, tensors = parameter_shapes(m, vocab_size)
    return 2 * FP32 * params + FP32 * tensors


def block_matmul_weights(m: ModelConfig) -> int:
    """Weights of one block's matmuls: what autocast keeps a 16-bit copy of."""
    h, f = m.d_model, d_ff(m)
    if m.arch == "llama":
        h_kv = (m.n_kv_heads or m.n_heads) * (h // m.n_heads)
        return 2 * h * h + 2 * h * h_kv + 3 * h * f
    return 4 * h * h + 2 * h * f


# ---------------------------------------------------------------------------- activations
def layer_bytes_per_token(m: ModelConfig, act_bytes: int, training: bool = True) -> float:
    """Bytes one block saves for backward per token; `act_bytes` 2 (bf16/fp16 autocast) or 4.

    The residual stream and the norms stay fp32 under autocast; every matmul saves its 16-bit
    input, and autocast casts a shared fp32 input once per matmul (Llama's q, k, v: three
    copies; in fp32 they share one tensor). SDPA saves q, k, v, its output and an fp32
    log-sum-exp per head; its output is laid out [b, s, heads, d], so the output projection's
    input is a view of it, not a copy. Dropout > 0 saves a 1-byte mask per residual dropout.
    """
    h, f, p, heads = m.d_model, d_ff(m), act_bytes, m.n_heads
    low = p < FP32  # autocast: separate 16-bit copies of fp32 matmul inputs
    attention = 4 * p * h + FP32 * heads  # q, k, v (one qkv tensor), output; log-sum-exp
    if m.arch == "gpt2":
        # 2 LayerNorm inputs + mean/rstd; inputs of c_attn and c_fc; gelu_new's Python ops
        # save 4 [f] tensors (input, tanh, 0.5 x, 1 + tanh) and mlp c_proj its input.
        saved = 2 * (FP32 * h + 2 * FP32) + 2 * p * h + attention + 5 * p * f
        drops = 2
    elif m.arch == "bert":
        # post-LN: q/k/v input (3 casts, or the fp32 block input) and intermediate input;
        # 2 LayerNorm inputs (fp32 sums) + mean/rstd; GELU input and output.
        saved = (4 if low else 2) * p * h + attention + 2 * (FP32 * h + 2 * FP32) + 2 * p * f
        drops = 2
    else:
        h_kv = (m.n_kv_heads or m.n_heads) * (h // m.n_heads)
        # 2 RMSNorms in Python: fp32 input, rsqrt, normalised x; matmul inputs (q k v, gate up:
        # 5 casts, or the 2 fp32 norm outputs); GQA's k, v are h_kv wide (native in SDPA);
        # SwiGLU: gate out, silu out, up out, product.
        norms = 2 * (2 * FP32 * h + FP32)
        inputs = 5 * p * h if low else 2 * FP32 * h
        attention = 2 * p * h + 2 * p * h_kv + FP32 * heads
        saved, drops = norms + inputs + attention + 4 * p * f, 0  # attention dropout: in-kernel
    return saved + (drops * h if training and m.dropout > 0 else 0)


def outside_bytes_per_token(m: ModelConfig) -> float:
    """Saved per token outside the blocks: the token index, the final norm's input (GPT-2,
    Llama) or the embedding LayerNorm's (BERT), and embedding dropout's mask."""
    h = m.d_model
    norm = FP32 * h + 2 * FP32 if m.arch != "llama" else 2 * FP32 * h + FP32
    mask = h if m.dropout > 0 and m.arch != "llama" else 0
    return INDEX + norm + mask


def head_bytes_per_scored(m: ModelConfig, act_bytes: int) -> float:
    """Saved per scored position by the head: the hidden state's fp32 gradient (chunked loss);
    BERT also its index, transform dense input, GELU input and the LayerNorm's fp32 input."""
    h = m.d_model
    if m.arch == "bert":
        return FP32 * h + 2 * INDEX + 2 * act_bytes * h + FP32 * h + 2 * FP32
    return FP32 * h


def activation_bytes(m: ModelConfig, sequences: int, act_bytes: int) -> int:
    """Bytes saved for backward by one micro-batch of `sequences` at full depth."""
    tokens = sequences * m.seq_len
    scored = round(m.mask_fraction * tokens) if m.arch == "bert" else tokens
    per_token = m.n_layers * layer_bytes_per_token(m, act_bytes) + outside_bytes_per_token(m)
    return math.ceil(tokens * per_token + scored * head_bytes_per_scored(m, act_bytes))


def loss_bytes(m: ModelConfig, vocab_size: int, sequences: int, act_bytes: int) -> int:
    """The chunked loss's peak: one chunk's logits (16-bit and fp32) with their 16-bit gradient,
    the head weight's 16-bit copy, and its fp32 gradient plus the temporary of one update."""
    tokens = sequences * m.seq_len
    scored = round(m.mask_fraction * tokens) if m.arch == "bert" else tokens
    rows = min(LOSS_CHUNK_ROWS, scored)
    low = act_bytes if act_bytes < FP32 else 0
    chunk = rows * vocab_size * (FP32 + low)
    head = vocab_size * m.d_model * (FP32 + low + act_bytes + (FP32 if low else 0))
    return chunk + head


# ---------------------------------------------------------------------------- the plan
def precision_bytes(precision: str) -> int:
    """2 for a 16-bit autocast (bf16, fp16), 4 for fp32."""
    return FP32 if precision == "fp32" else 2


def gpu_precision(cfg: Config) -> str:
    """What a GPU run computes in: fp32 when asked, else 16-bit (bf16, or fp16 on older cards)."""
    return "fp32" if cfg.runtime.precision == "fp32" else "bf16"


def plan_memory(
    cfg: Config, vocab_size: int, workers: int = 1, precision: str | None = None
) -> MemoryPlan:
    """The expected peak bytes per GPU of `cfg`; `workers` split the global micro-batch
    `budget.batch_size` (each takes at most ceil(batch / workers) sequences)."""
    m, precision = cfg.model, precision or gpu_precision(cfg)
    p = precision_bytes(precision)
    micro = -(-cfg.budget.batch_size // max(1, workers))
    params, _ = parameter_shapes(m, vocab_size)
    grads = FP32 * params * (2 if workers > 1 else 1)  # DDP's buckets hold a second copy
    copies = m.n_layers * block_matmul_weights(m) * p if p < FP32 else 0
    acts = activation_bytes(m, micro, p)
    loss = loss_bytes(m, vocab_size, micro, p)
    state = FP32 * params + grads + optimizer_bytes(m, vocab_size) + copies
    working = math.ceil(micro * m.seq_len * layer_bytes_per_token(m, p))
    margin = math.ceil(FRAGMENTATION * (state + acts + loss + working)) + working + CONTEXT_BYTES
    return MemoryPlan(
        micro_batch=micro,
        workers=max(1, workers),
        precision=precision,
        parameter_bytes=FP32 * params,
        gradient_bytes=grads,
        optimizer_bytes=optimizer_bytes(m, vocab_size),
        weight_copy_bytes=copies,
        activation_bytes=acts,
        loss_bytes=loss,
        margin_bytes=margin,
    )


def largest_fitting_micro_batch(
    cfg: Config, vocab_size: int, gpu_bytes: int, workers: int = 1, precision: str | None = None
) -> int:
    """The most sequences per worker whose plan fits `gpu_bytes` (0 when not even one does)."""
    best = 0
    for micro in range(1, -(-cfg.budget.batch_size // max(1, workers)) + 1):
        plan = plan_memory(_with_batch(cfg, micro * workers), vocab_size, workers, precision)
        if plan.total_bytes > gpu_bytes:
            break
        best = micro
    return best


def _with_batch(cfg: Config, batch_size: int) -> Config:
    from dataclasses import replace

    return replace(cfg, budget=replace(cfg.budget, batch_size=batch_size))


def check_fits(
    cfg: Config,
    vocab_size: int,
    workers: int,
    gpu_bytes: int | None = None,
    precision: str | None = None,
) -> MemoryPlan:
    """The plan, or ConfigError naming budget.batch_size and the fix when it exceeds
    `gpu_bytes`, the memory of one GPU (None: the visible GPU's; no check without one). The
    training loop calls this once before its first CUDA step."""
    plan = plan_memory(cfg, vocab_size, workers, precision)
    if gpu_bytes is None:
        gpu = visible_gpu()
        gpu_bytes = gpu[1] if gpu else None
    if gpu_bytes is None or plan.total_bytes <= gpu_bytes:
        return plan
    b = cfg.budget
    fits = largest_fitting_micro_batch(cfg, vocab_size, gpu_bytes, workers, precision)
    if fits == 0:
        hint = "not even 1 sequence fits: use a smaller model.seq_len or a larger GPU"
    else:
        factor = -(-plan.micro_batch // fits)
        hint = (
            f"at most {fits} fit: keep the global batch with budget.batch_size="
            f"{-(-b.batch_size // factor)} budget.grad_accum={b.grad_accum * factor}, "
            f"or split it over more workers"
        )
    raise ConfigError(
        f"budget.batch_size={b.batch_size} over {plan.workers} worker(s) puts "
        f"{plan.micro_batch} sequences on each GPU, ~{plan.total_bytes / GIB:.1f} GiB, more than "
        f"its {gpu_bytes / GIB:.1f} GiB; {hint}"
    )


def visible_gpu() -> tuple[str, int] | None:
    """(name, bytes) of the first visible CUDA device, or None."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return props.name, int(props.total_memory)


def memory_line(cfg: Config, vocab_size: int, workers: int) -> str:
    """The dry runs' line: the plan against the visible GPU or the reference card. Raises
    ConfigError (check_fits) when a visible GPU that the run would use is too small."""
    gpu = visible_gpu() if cfg.runtime.device != "cpu" else None
    name, gpu_bytes = (f"this {gpu[0]}", gpu[1]) if gpu else REFERENCE_GPU
    plan = check_fits(cfg, vocab_size, workers, gpu_bytes) if gpu else None
    plan = plan or plan_memory(cfg, vocab_size, workers)
    fits = "fits" if plan.total_bytes <= gpu_bytes else "does NOT fit"
    return (
        f"peak memory per GPU ~{plan.total_bytes / GIB:.1f} GiB for a micro-batch of "
        f"{plan.micro_batch} sequences per worker ({cfg.budget.batch_size} global over "
        f"{plan.workers} worker(s), {plan.breakdown()}): {fits} the "
        f"{gpu_bytes / GIB:.0f} GiB of {name}"
    )
