"""The base presets carry the reference release's recipe (issue 12 part 3); models built on meta.

Reference: yuanyehome/Apollo-AAAI-2024-Release, full-scripts/run_pretrain_gpt2_apollo_32gpus.sh
(12 per device x 2 accumulation x 32 GPUs) and run_pretrain_bert_apollo.sh (48 per device, no
accumulation), transformers' AdamW / Trainer defaults, the HF gpt2 and bert-base-uncased configs.
No test here allocates a base-size weight: models are built on the meta device.
"""

from __future__ import annotations

import pytest
import torch

from progtune.config import DEFAULT_PRESET, resolve
from progtune.model import build_hf_model, flops_per_token
from progtune.schedules import lr_at
from progtune.train import Plan, make_optimizer

# knob -> the reference's value, shared by its GPT-2 and BERT runs
REFERENCE_RECIPE = {
    "lr.peak": 1e-4,  # --learning_rate 0.0001
    "lr.weight_decay": 0.01,  # --weight_decay 0.01
    "lr.warmup_fraction": 0.025,  # --warmup_ratio 0.025
    "lr.schedule": "cosine",  # --lr_scheduler_type cosine
    "lr.min_ratio": 0.0,  # transformers' cosine ends at 0
    "lr.beta1": 0.9,  # adam_beta1
    "lr.beta2": 0.999,  # adam_beta2
    "lr.grad_clip": 1.0,  # max_grad_norm
    "model.dropout": 0.1,  # HF gpt2 / bert-base-uncased configs
    "model.n_layers": 12,
    "model.d_model": 768,
    "model.n_heads": 12,
    "stages.unique_layers": (1, 3, 6, 12),  # --apollo_layers 1,3,6,12
    "stages.boundaries": (0.05, 0.1, 0.25),  # --apollo_epoch_list 2,4,10,40
}
# preset -> (arch, seq_len, reference tokenizer size, micro-batch, accumulation, published params)
REFERENCE_SHAPES = {
    "gpt2-base": ("gpt2", 1024, 50_257, 12 * 32, 2, 124_439_808),
    "bert-base": ("bert", 512, 30_522, 48 * 16, 1, 110_000_000),
}


def knob(cfg, name: str):
    section, leaf = name.split(".")
    return getattr(getattr(cfg, section), leaf)


@pytest.mark.parametrize("name", sorted(REFERENCE_SHAPES))
def test_base_preset_carries_the_reference_recipe(name: str) -> None:
    cfg = resolve(name)
    assert {k: knob(cfg, k) for k in REFERENCE_RECIPE} == REFERENCE_RECIPE
    arch, seq_len, _, micro, accum, _ = REFERENCE_SHAPES[name]
    assert (cfg.model.arch, cfg.model.seq_len) == (arch, seq_len)
    # budget.batch_size is the global micro-batch: the reference's per-device batch x its GPUs
    assert (cfg.budget.batch_size, cfg.budget.grad_accum) == (micro, accum)
    assert cfg.budget.batch_size * cfg.budget.grad_accum == 768  # sequences per optimizer step
    if arch == "bert":
        assert cfg.model.mask_fraction == 0.15  # mlm_probability
    per = getattr(cfg.sampling, "per", "micro_batch")  # one draw per global micro-batch
    assert per == "micro_batch"


@pytest.mark.parametrize("name", sorted(REFERENCE_SHAPES))
def test_base_model_on_meta_has_the_reference_dropout_and_size(name: str) -> None:
    cfg = resolve(name)
    _, _, ref_vocab, _, _, published = REFERENCE_SHAPES[name]
    vocab = cfg.data.vocab_size
    assert vocab % 64 == 0 and 0 <= vocab - ref_vocab < 64  # padded for tensor cores only
    model = build_hf_model(cfg.model, vocab, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing allocated
    hf = model.config
    if cfg.model.arch == "gpt2":
        dropouts = (hf.resid_pdrop, hf.embd_pdrop, hf.attn_pdrop)
    else:
        dropouts = (hf.hidden_dropout_prob, hf.attention_probs_dropout_prob)
    assert dropouts == pytest.approx((0.1,) * len(dropouts))
    n = sum(p.numel() for p in model.parameters())
    assert n == pytest.approx(published, rel=0.01)
    # the output head's FLOPs share (apollo.md 6) is the reference tokenizer's within 0.1 %
    assert flops_per_token(cfg.model, vocab, 1) == pytest.approx(
        flops_per_token(cfg.model, ref_vocab, 1), rel=1e-3
    )


@pytest.mark.parametrize("name", sorted(REFERENCE_SHAPES))
def test_base_optimizer_on_meta_is_transformers_adamw(name: str) -> None:
    cfg = resolve(name)
    model = build_hf_model(cfg.model, cfg.data.vocab_size, device="meta")
    opt = make_optimizer(model, cfg, torch.device("meta"))
    decay, rest = opt.param_groups
    for group in (decay, rest):
        assert group["betas"] == (0.9, 0.999) and group["lr"] == 1e-4
        assert group["eps"] == 1e-8  # transformers' adam_epsilon, torch's default
    # transformers decays every weight but biases and LayerNorm weights; progtune every >= 2-D one
    assert decay["weight_decay"] == 0.01 and rest["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in rest["params"])


@pytest.mark.parametrize("name", sorted(REFERENCE_SHAPES))
def test_base_schedule_grows_and_warms_up_where_the_reference_does(name: str) -> None:
    cfg = resolve(name)
    plan = Plan.of(cfg)
    tokens_per_step = cfg.budget.batch_size * cfg.budget.grad_accum * cfg.model.seq_len
    assert plan.total_steps == cfg.budget.tokens // tokens_per_step
    # epochs 2, 4 and 10 of 40, in optimizer steps
    assert plan.growth_steps == [round(f * plan.total_steps) for f in (2 / 40, 4 / 40, 10 / 40)]
    warmup = round(0.025 * plan.total_steps)
    assert lr_at(warmup - 1, plan.total_steps, cfg.lr) == pytest.approx(1e-4)
    assert lr_at(warmup // 2, plan.total_steps, cfg.lr) < 0.6e-4
    # cosine: half the peak half way through the decay, ~0 at the end
    middle = warmup + (plan.total_steps - warmup) // 2
    assert lr_at(middle, plan.total_steps, cfg.lr) == pytest.approx(0.5e-4, rel=1e-3)
    assert lr_at(plan.total_steps - 1, plan.total_steps, cfg.lr) < 1e-10


def test_llama_base_follows_gpt2_base_without_dropout() -> None:
    gpt2, llama = resolve("gpt2-base"), resolve("llama-base")
    assert llama.lr == gpt2.lr and llama.stages == gpt2.stages and llama.budget == gpt2.budget
    assert (llama.model.arch, llama.model.seq_len, llama.model.dropout) == ("llama", 1024, 0.0)
    model = build_hf_model(llama.model, llama.data.vocab_size, device="meta")
    assert model.config.attention_dropout == 0.0


@pytest.mark.parametrize("name", ["tiny", "cpu-small"])
def test_cpu_presets_keep_their_settings(name: str) -> None:
    """The default run does not change: progtune's own AdamW beta2 0.95, no dropout, one
    micro-batch per step."""
    cfg = resolve(name)
    assert (cfg.lr.beta2, cfg.model.dropout, cfg.budget.grad_accum) == (0.95, 0.0, 1)
    assert cfg.budget.batch_size == {"tiny": 8, "cpu-small": 16}[name]
    assert cfg.lr.peak == {"tiny": 3e-3, "cpu-small": 4e-3}[name]
    assert DEFAULT_PRESET == "cpu-small"
