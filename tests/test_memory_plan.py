"""The per-GPU memory plan: exact state bytes, activations vs what autograd saves, refusals."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from progtune import memory_plan
from progtune.cli import main
from progtune.config import Config, ModelConfig, resolve
from progtune.dry_run import workers_of
from progtune.errors import ConfigError
from progtune.memory_plan import (
    GIB,
    activation_bytes,
    block_matmul_weights,
    check_fits,
    optimizer_bytes,
    parameter_shapes,
    plan_memory,
)
from progtune.model import ProgressiveLM
from progtune.train import make_optimizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
VOCAB = 300
# Token count 3 x 40 = 120 differs from every parameter dimension (48, 144, 192, 300, 40 x 48
# position table is 2-D, activations 3-D), so weight-shaped saved tensors are told apart by shape.
BATCH, SEQ = 3, 40
# The activation estimate is within 5 % of what saved-tensor hooks measure (it counts
# each kind of saved tensor from the blocks' code; the rest is small tensors and rounding).
ACTIVATION_FACTOR = 1.05


def model_cfg(arch: str, **extra) -> ModelConfig:
    kv = {"n_kv_heads": 2} if arch == "llama" else {}  # grouped-query attention exercised
    return ModelConfig(arch=arch, n_layers=2, d_model=48, n_heads=4, seq_len=SEQ, **kv, **extra)


def full_lm(m: ModelConfig) -> ProgressiveLM:
    torch.manual_seed(0)
    return ProgressiveLM(m, VOCAB, m.n_layers, "interpolation").train()


def with_model(m: ModelConfig, **budget) -> Config:
    cfg = resolve("tiny")
    return dataclasses.replace(cfg, model=m, budget=dataclasses.replace(cfg.budget, **budget))


def inputs(arch: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(3, VOCAB, (BATCH, SEQ), generator=g)
    if arch == "bert":  # the plan scores round(mask_fraction x tokens) positions: score exactly so
        y = torch.full_like(x, -100).view(-1)
        y[torch.randperm(x.numel(), generator=g)[: round(0.15 * x.numel())]] = 3
        return x, y.view_as(x)
    return x, torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)


def saved_bytes(lm: ProgressiveLM, arch: str, precision: str) -> tuple[int, int]:
    """(activation bytes, weight-shaped bytes) autograd saves for backward in one forward;
    each storage once, parameters themselves not counted (matmuls save weights transposed)."""
    params = {p.untyped_storage().data_ptr() for p in lm.parameters()}
    shapes = {s for p in lm.parameters() for s in (tuple(p.shape), tuple(p.shape)[::-1])}
    acts: dict[int, int] = {}
    weights: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            bucket = weights if tuple(t.shape) in shapes else acts
            bucket[storage.data_ptr()] = storage.nbytes()
        return t

    x, y = inputs(arch)
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"),
    ):
        loss = lm(x, y)  # kept alive: no saved storage is freed and its address reused
    assert loss.value.requires_grad
    return sum(acts.values()), sum(weights.values())


# ---------------------------------------------------------------------------- exact state
@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_parameter_and_optimizer_bytes_are_exact(arch: str) -> None:
    m = model_cfg(arch)
    lm = full_lm(m)
    params = list(lm.parameters())  # tied tensors once
    assert parameter_shapes(m, VOCAB) == (sum(p.numel() for p in params), len(params))
    cfg = with_model(m)
    opt = make_optimizer(lm, cfg, torch.device("cpu"))
    x, y = inputs(arch)
    lm(x, y).value.backward()
    opt.step()
    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    assert optimizer_bytes(m, VOCAB) == sum(t.numel() * t.element_size() for t in state)
    plan = plan_memory(cfg, VOCAB, workers=1)
    assert plan.parameter_bytes == plan.gradient_bytes == 4 * sum(p.numel() for p in params)
    assert plan_memory(cfg, VOCAB, workers=2).gradient_bytes == 2 * plan.gradient_bytes  # DDP


# ---------------------------------------------------------------------------- activations
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_activation_estimate_matches_saved_tensor_hooks(arch: str, precision: str) -> None:
    m = model_cfg(arch)
    measured, weight_shaped = saved_bytes(full_lm(m), arch, precision)
    p = 4 if precision == "fp32" else 2
    estimate = activation_bytes(m, BATCH, p)
    assert 1 / ACTIVATION_FACTOR <= estimate / measured <= ACTIVATION_FACTOR, (estimate, measured)
    # Weight-shaped: the head's fp32 gradient (chunked loss) and autocast's 16-bit block weights.
    head = 4 * VOCAB * m.d_model + (4 * VOCAB if arch == "bert" else 0)
    copies = m.n_layers * block_matmul_weights(m) * p if p == 2 else 0
    bert_transform = m.d_model**2 * p if arch == "bert" and p == 2 else 0
    assert weight_shaped == head + copies + bert_transform


def test_dropout_adds_one_byte_masks() -> None:
    """CUDA's fused dropout saves a bool mask per residual dropout (2 per GPT-2 block, 1 after
    the embeddings); attention dropout runs inside the flash kernel. Not measured here: on CPU
    dropout saves fp32 masks and SDPA with dropout falls back to the math kernel."""
    drop, plain = model_cfg("gpt2", dropout=0.1), model_cfg("gpt2")
    tokens, h = BATCH * SEQ, drop.d_model
    added = activation_bytes(drop, BATCH, 2) - activation_bytes(plain, BATCH, 2)
    assert added == tokens * (2 * drop.n_layers * h + h)


@pytest.mark.gpu
def test_plan_bounds_the_measured_peak_on_a_gpu() -> None:
    """On CUDA: the peak PyTorch allocates over two bf16 steps (forward, backward, AdamW) of a
    GPT-2 4 x 256 at V = 32k lies under the plan without its context share, and the plan's
    tensors (without any margin) are within 25 % of it."""
    m = ModelConfig(arch="gpt2", n_layers=4, d_model=256, n_heads=4, seq_len=512)
    cfg = with_model(m, batch_size=8)
    device = torch.device("cuda")
    torch.manual_seed(0)
    lm = ProgressiveLM(m, 32_768, m.n_layers, "interpolation").to(device).train()
    opt = make_optimizer(lm, cfg, device)
    x = torch.randint(0, 32_768, (8, m.seq_len), device=device)
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = lm(x, x)
        loss.value.backward()
        opt.step()
    measured = torch.cuda.max_memory_allocated()
    plan = plan_memory(cfg, 32_768, 1, "bf16")
    assert measured <= plan.total_bytes - memory_plan.CONTEXT_BYTES
    tensors = plan.total_bytes - plan.margin_bytes
    assert 1 / 1.25 <= tensors / measured <= 1.25, (tensors, measured)


# ---------------------------------------------------------------------------- refusals
def test_check_fits_refuses_naming_the_batch_and_the_fix() -> None:
    cfg = resolve("gpt2-base", overrides={"budget.batch_size": 384, "budget.grad_accum": 1})
    plan = check_fits(cfg, 32_768, workers=8, gpu_bytes=10_000 * GIB)
    assert plan.micro_batch == 48 and plan.workers == 8
    with pytest.raises(ConfigError) as info:
        check_fits(cfg, 32_768, workers=1, gpu_bytes=80 * GIB)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("budget.batch_size=384 over 1 worker(s) puts 384 sequences")
    assert "budget.grad_accum=" in message and "workers" in message
    # The suggested split fits: the largest micro-batch that fits is really the largest.
    fits = memory_plan.largest_fitting_micro_batch(cfg, 32_768, 80 * GIB)
    assert 0 < fits < 384
    assert plan_memory(with_model(cfg.model, batch_size=fits), 32_768).total_bytes <= 80 * GIB
    assert plan_memory(with_model(cfg.model, batch_size=fits + 1), 32_768).total_bytes > 80 * GIB


def test_plan_grows_with_the_micro_batch_and_shrinks_with_workers() -> None:
    cfg = resolve("gpt2-base", overrides={"budget.batch_size": 64})
    one, eight = plan_memory(cfg, 32_768, 1), plan_memory(cfg, 32_768, 8)
    assert eight.micro_batch == 8 and eight.activation_bytes * 8 == pytest.approx(
        one.activation_bytes, rel=1e-6
    )
    fp32 = plan_memory(cfg, 32_768, 1, "fp32")
    assert fp32.activation_bytes > one.activation_bytes and fp32.weight_copy_bytes == 0


# ---------------------------------------------------------------------------- dry runs
def test_workers_come_from_workers_or_whole_gpus_per_trial() -> None:
    assert workers_of(argparse.Namespace(workers_per_trial=4, gpus_per_trial=None)) == 4
    assert workers_of(argparse.Namespace(workers_per_trial=None, gpus_per_trial=2.0)) == 2
    assert workers_of(argparse.Namespace(gpus_per_trial=0.5)) == 1  # a GPU share: one worker
    assert workers_of(argparse.Namespace()) == 1


def test_train_dry_run_prints_the_memory_line(tiny_cfg, capsys) -> None:
    cache = f"data.cache_dir={tiny_cfg.data.cache_dir}"
    assert main(["train", "--preset", "tiny", "--dry-run", cache]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "peak memory per GPU" in ln]
    assert len(lines) == 1
    assert "micro-batch of 8 sequences per worker (8 global over 1 worker(s)" in lines[0]
    assert "80 GiB of an 80 GiB H100 (reference card, no GPU visible)" in lines[0]


def test_search_dry_run_prints_the_memory_line(tiny_cfg, capsys) -> None:
    cache = f"data.cache_dir={tiny_cfg.data.cache_dir}"
    args = ["search", "--dry-run", "--preset", "tiny", "--num-samples", "1", cache]
    assert main(args) == 0
    assert sum("peak memory per GPU" in ln for ln in capsys.readouterr().out.splitlines()) == 1


def test_dry_run_refuses_a_micro_batch_too_large_for_the_visible_gpu(
    tiny_cfg, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(memory_plan, "visible_gpu", lambda: ("Tiny GPU", GIB))
    cache = f"data.cache_dir={tiny_cfg.data.cache_dir}"
    code = main(
        [
            "train",
            "--preset",
            "tiny",
            "--dry-run",
            cache,
            "budget.batch_size=4096",
            "budget.tokens=1000000000",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "budget.batch_size=4096" in err[0] and "1.0 GiB" in err[0]


def test_training_refuses_before_its_first_cuda_step(tiny_cfg, tiny_data, monkeypatch) -> None:
    # No GPU here: pretend the run resolved to one with 1 GiB; the refusal must come before the
    # model is built (building it would fail on this machine with a different error).
    import progtune.train as train_module
    from progtune.config import with_overrides

    monkeypatch.setattr(memory_plan, "visible_gpu", lambda: ("Tiny GPU", GIB))
    monkeypatch.setattr(
        train_module, "set_up_process", lambda cfg, ranks: (torch.device("cuda", 0), "bf16")
    )
    big = with_overrides(tiny_cfg, {"budget.batch_size": 4096, "budget.tokens": 10**9})
    with pytest.raises(ConfigError, match=r"budget\.batch_size"):
        train_module.train(big, data=tiny_data)
