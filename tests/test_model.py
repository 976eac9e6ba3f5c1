"""ProgressiveLM: shared blocks, function-preserving growth, FLOPs accounting and HF export."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from progtune.config import ModelConfig
from progtune.growth import layer_plan
from progtune.model import (
    ProgressiveLM,
    block_matmul_flops,
    build_hf_model,
    flops_per_token,
    head_flops,
    train_flops,
)

ARCHS = ("gpt2", "llama", "bert")
VOCAB = 97
SEQ = 16
pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONTAINER = {"gpt2": "transformer.h", "llama": "model.layers", "bert": "bert.encoder.layer"}


def tiny_model_cfg(arch: str, n_layers: int = 4) -> ModelConfig:
    # Llama with 1 KV head for 2 query heads: grouped-query attention is exercised.
    return ModelConfig(
        arch=arch,
        n_layers=n_layers,
        d_model=32,
        n_heads=2,
        n_kv_heads=1 if arch == "llama" else 0,
        seq_len=SEQ,
    )


def make_lm(arch: str, k: int, operator: str = "interpolation", n_layers: int = 4):
    torch.manual_seed(0)
    return ProgressiveLM(tiny_model_cfg(arch, n_layers), VOCAB, k, operator)


def batch(arch: str, n: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and targets; BERT targets are -100 except at ~30 % scored positions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, VOCAB, (n, SEQ), generator=g)
    if arch == "bert":
        scored = torch.rand(n, SEQ, generator=g) < 0.3
        scored[:, 0] = True
        return x, torch.where(scored, x, torch.full_like(x, -100))
    return x, torch.randint(0, VOCAB, (n, SEQ), generator=g)


def container(lm: ProgressiveLM) -> list:
    obj = lm.hf
    for part in CONTAINER[lm.m.arch].split("."):
        obj = getattr(obj, part)
    return obj


@torch.no_grad()
def logits_at(lm: ProgressiveLM, depth: int, x: torch.Tensor) -> torch.Tensor:
    lm.set_depth(depth)
    return lm.hf(input_ids=x).logits


# ---------------------------------------------------------------------------- sharing
@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_holds_only_the_unique_blocks(arch: str) -> None:
    lm = make_lm(arch, k=2)
    full = build_hf_model(lm.m, VOCAB, device="meta")
    block_keys = len(lm.blocks[0].state_dict())
    block_params = sum(p.numel() for p in lm.blocks[0].parameters())
    prefix = f"hf.{CONTAINER[arch]}."

    for k in (2, 4):
        if k == 4:
            lm.grow(4)
        sd = lm.state_dict()
        assert not [key for key in sd if key.startswith(prefix)]  # no per-position copies
        assert {int(key.split(".")[1]) for key in sd if key.startswith("blocks.")} == set(range(k))
        assert len(sd) == len(full.state_dict()) - (4 - k) * block_keys
        n_params = sum(p.numel() for p in lm.parameters())
        assert n_params == sum(p.numel() for p in full.parameters()) - (4 - k) * block_params
    # After growth every block owns its own storage (untied copies, not views).
    ptrs = [p.data_ptr() for b in lm.blocks for p in b.parameters()]
    assert len(ptrs) == len(set(ptrs))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("operator", ["interpolation", "stacking"])
def test_set_depth_lays_out_the_same_block_objects(arch: str, operator: str) -> None:
    lm = make_lm(arch, k=2, operator=operator)
    for depth in (2, 3, 4):
        plan = lm.set_depth(depth)
        assert plan == layer_plan(operator, 2, depth)
        layers = container(lm)
        assert len(layers) == depth
        assert all(layers[i] is lm.blocks[j] for i, j in enumerate(plan))
    with pytest.raises(ValueError):
        lm.set_depth(1)  # fewer positions than unique blocks


def test_shared_block_gradient_is_the_sum_over_its_positions() -> None:
    # k = 1 block run at depth 2 == an untied 2-layer model whose layers hold the same weights;
    # the shared block's gradient is the sum of the two layers' gradients.
    lm = make_lm("gpt2", k=1, n_layers=2)
    lm.set_depth(2)
    untied = lm.export_hf()
    x, y = batch("gpt2")
    lm(x, y).value.backward()
    logits = untied(input_ids=x).logits
    F.cross_entropy(logits.view(-1, VOCAB), y.reshape(-1)).backward()
    for name, p in lm.blocks[0].named_parameters():
        g = untied.transformer.h[0].get_parameter(name).grad
        g = g + untied.transformer.h[1].get_parameter(name).grad
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------- growth
# Depths at which a growth is function preserving (test_growth.py proves the layout identity):
# d = k_new for every operator; every d for interpolation with k_old | k_new; multiples of
# k_new for stacking.
def _preserved_depths(operator: str, k_new: int, n_layers: int) -> list[int]:
    if operator == "interpolation":
        return list(range(k_new, n_layers + 1))
    return list(range(k_new, n_layers + 1, k_new))


@torch.no_grad()
def perturb_blocks(lm: ProgressiveLM, seed: int) -> None:
    """Stand-in for training between growths: copies made by the last growth stop being equal."""
    g = torch.Generator().manual_seed(seed)
    for p in lm.blocks.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("operator", ["interpolation", "stacking"])
def test_growth_preserves_the_function(arch: str, operator: str) -> None:
    n_layers = 8
    lm = make_lm(arch, k=1, operator=operator, n_layers=n_layers).eval()
    x, y = batch(arch)
    assert not torch.equal(logits_at(lm, 1, x), logits_at(lm, 2, x))  # depth matters
    for step, k_new in enumerate((2, 4, 8)):  # 2 -> 4 needs the snapshot: new block 1 is read
        perturb_blocks(lm, seed=step)
        old_blocks = list(lm.blocks)
        depths = _preserved_depths(operator, k_new, n_layers)
        before = {d: logits_at(lm, d, x) for d in depths}
        lm.set_depth(k_new)
        with torch.no_grad():
            loss_before = lm(x, y).value
        mapping = lm.grow(k_new)
        assert mapping == layer_plan(operator, len(old_blocks), k_new)
        assert len(lm.blocks) == k_new
        assert all(a is b for a, b in zip(old_blocks, lm.blocks, strict=False))  # identity kept
        for d in depths:
            assert torch.equal(logits_at(lm, d, x), before[d]), (k_new, d)
        lm.set_depth(k_new)
        with torch.no_grad():
            assert torch.equal(lm(x, y).value, loss_before)


# ---------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("arch", ARCHS)
def test_train_flops_match_torch_flop_counter(arch: str) -> None:
    """The formula vs a measured forward + backward at depth 3 over 2 shared blocks (L = 4)."""
    lm = make_lm(arch, k=2).train()
    lm.set_depth(3)  # k = 2 < d = 3 < L = 4: blocks are shared
    x, y = batch(arch, n=4)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss = lm(x, y)
        loss.value.backward()
    measured = counter.get_total_flops()
    n_scored = loss.n_scored if arch == "bert" else None  # BERT's head scores masked positions
    if arch == "bert":
        assert loss.n_scored == int((y != -100).sum()) < x.numel()
    estimate = train_flops(lm.m, VOCAB, 3, x.numel(), n_scored)
    assert isinstance(estimate, float)
    assert estimate == pytest.approx(measured, rel=0.03)


def test_flops_stay_float64_at_base_scale() -> None:
    m = ModelConfig(arch="gpt2", n_layers=12, d_model=768, n_heads=12, seq_len=1024)
    h, v, n_ctx = 768, 50257, 1024
    exact_per_token = 3 * (12 * (24 * h * h + 4 * n_ctx * h) + 2 * h * v)  # apollo.md section 6
    for tokens in (10_000_000_000, 20_000_000_000):  # the second passes 2^63 integer FLOPs
        flops = train_flops(m, v, 12, tokens)
        assert type(flops) is float and flops > 0 and math.isfinite(flops)
        assert flops == pytest.approx(exact_per_token * tokens, rel=1e-12)
    assert exact_per_token * 20_000_000_000 > 2**63
    assert flops_per_token(m, v, 12) == exact_per_token


def test_head_share_quoted_in_apollo_md() -> None:
    # h = 768, V ~ 50k: the head is ~27 % of a 12-layer step but ~82 % of a 1-layer step.
    m = ModelConfig(arch="gpt2", n_layers=12, d_model=768, n_heads=12, seq_len=1024)
    head = 3 * head_flops(m, 50257)
    assert head / flops_per_token(m, 50257, 12) == pytest.approx(0.27, abs=0.005)
    assert head / flops_per_token(m, 50257, 1) == pytest.approx(0.82, abs=0.005)


def test_block_and_head_formulas() -> None:
    h = 768
    gpt2 = ModelConfig(arch="gpt2", n_layers=12, d_model=h, n_heads=12)
    assert block_matmul_flops(gpt2) == 24 * h * h
    llama = ModelConfig(
        arch="llama", n_layers=12, d_model=h, n_heads=12, n_kv_heads=4, d_ff=2048, seq_len=1024
    )
    h_kv, f = 4 * 64, 2048
    assert block_matmul_flops(llama) == 2 * (2 * h * h + 2 * h * h_kv + 3 * h * f)
    assert head_flops(llama, 32000) == 2 * h * 32000
    bert = ModelConfig(arch="bert", n_layers=12, d_model=h, n_heads=12, seq_len=512)
    assert head_flops(bert, 30522) == 2 * h * 30522 + 2 * h * h  # + the MLM dense transform
    # BERT's per-token figure counts the head at the mask fraction of positions.
    n = 1000
    per_token = flops_per_token(bert, 30522, 12)
    scored = round(bert.mask_fraction * n)
    assert per_token * n == pytest.approx(train_flops(bert, 30522, 12, n, scored), rel=1e-12)
    # Llama's default MLP width: 8h/3 rounded up to a multiple of 64.
    default = ModelConfig(arch="llama", n_layers=2, d_model=96, n_heads=2)
    assert block_matmul_flops(default) == 2 * (2 * 96 * 96 + 2 * 96 * 96 + 3 * 96 * 256)


# ---------------------------------------------------------------------------- export
def _auto(arch: str):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForMaskedLM if arch == "bert" else AutoModelForCausalLM


@pytest.mark.parametrize(
    ("arch", "grow_to_full"),
    [("gpt2", True), ("gpt2", False), ("llama", False), ("bert", False), ("bert", True)],
)
def test_export_round_trips_through_save_pretrained(
    arch: str, grow_to_full: bool, tmp_path: Path
) -> None:
    lm = make_lm(arch, k=2)
    if grow_to_full:
        lm.grow(4)  # plan at L is the identity
    lm.eval()
    x, y = batch(arch)
    expected = logits_at(lm, 4, x)
    with torch.no_grad():
        expected_loss = lm(x, y).value

    exported = lm.export_hf()
    # Untied: positions that share a unique block get their own tensors (save_pretrained
    # refuses shared tensors).
    layers = container_of(exported, arch)
    assert len(layers) == 4
    ptrs = [p.data_ptr() for layer in layers for p in layer.parameters()]
    assert len(ptrs) == len(set(ptrs))
    exported.save_pretrained(tmp_path)
    loaded = _auto(arch).from_pretrained(tmp_path).eval()

    with torch.no_grad():
        got = loaded(input_ids=x).logits
    assert torch.equal(got, expected)
    scored = y != -100
    loss = F.cross_entropy(got[scored].float(), y[scored])
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-6)


def container_of(model, arch: str):
    obj = model
    for part in CONTAINER[arch].split("."):
        obj = getattr(obj, part)
    return obj
