"""The one typed, frozen config tree: presets, YAML files and dotted `KEY=VALUE` overrides."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from progtune.config_parsing import (
    coerce_value,
    flatten_sections,
    parse_assignments,
    read_yaml_mapping,
)
from progtune.config_sections import (
    ARCHS,
    GROWTH_OPERATORS,
    LR_SCHEDULES,
    OPTIMIZER_STATE_POLICIES,
    PRECISIONS,
    SAMPLING_STRATEGIES,
    BudgetConfig,
    DataConfig,
    EvalConfig,
    GrowthConfig,
    LRConfig,
    ModelConfig,
    RuntimeConfig,
    SamplingConfig,
    StagesConfig,
    require,
)
from progtune.errors import ConfigError

__all__ = [  # the sections and parsers re-exported here keep `from progtune.config import X`
    "ARCHS",
    "DEFAULT_PRESET",
    "GROWTH_OPERATORS",
    "KNOB_TYPES",
    "LR_SCHEDULES",
    "OPTIMIZER_STATE_POLICIES",
    "PRECISIONS",
    "PRESETS",
    "SAMPLING_STRATEGIES",
    "BudgetConfig",
    "Config",
    "DataConfig",
    "EvalConfig",
    "GrowthConfig",
    "LRConfig",
    "ModelConfig",
    "RuntimeConfig",
    "SamplingConfig",
    "StagesConfig",
    "config_hash",
    "flatten",
    "from_flat",
    "knob_names",
    "list_text",
    "load_yaml",
    "parse_assignments",
    "preset",
    "resolve",
    "scratch_overrides",
    "to_dict",
    "validate",
    "with_overrides",
]


@dataclass(frozen=True)
class Config:
    """A complete training run. Every knob has one dotted name everywhere."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    growth: GrowthConfig = field(default_factory=GrowthConfig)
    lr: LRConfig = field(default_factory=LRConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    seed: int = 0  # seeds the weights, batch order and depth draws of the run


# ---------------------------------------------------------------------------- presets
# Each preset is a dotted override dict on top of the defaults above.
PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a CPU: tests.
    "tiny": {
        "model.n_layers": 2,
        "model.d_model": 32,
        "model.n_heads": 2,
        "model.seq_len": 32,
        "data.vocab_size": 320,
        "data.max_bytes": 1_000_000,
        "data.val_every": 10,
        "stages.unique_layers": (1, 2),
        "stages.boundaries": (0.5,),
        "budget.tokens": 16_384,
        "budget.batch_size": 8,
        "eval.points": 4,
        "eval.max_tokens": 4_096,
        "lr.peak": 3e-3,
        "lr.warmup_fraction": 0.1,
    },
    # A few minutes per run on 2 laptop cores: demos and the default search.
    "cpu-small": {
        "model.n_layers": 4,
        "model.d_model": 128,
        "model.n_heads": 4,
        "model.seq_len": 128,
        "data.vocab_size": 2048,
        "stages.unique_layers": (1, 2, 4),
        "stages.boundaries": (0.2, 0.5),
        # 1.6 M tokens: growth first reaches scratch's loss on every seed at this budget, none
        # does at 0.4 M (docs/benchmarks.md, budget sweep); a default search takes ~15 min.
        "budget.tokens": 1_600_000,
        "budget.batch_size": 16,
        "eval.points": 8,
        "eval.max_tokens": 8_192,  # 64 windows: evaluation stays under ~3 % of a trial
        # scratch's best at 1.6 M tokens of 1e-3 / 2e-3 / 4e-3 / 8e-3 (10 % warmup): 3.664 vs
        # 3.796 at 2e-3, which was best at 0.4 M tokens (docs/benchmarks.md)
        "lr.peak": 4e-3,
        "lr.warmup_fraction": 0.1,
    },
}
# GPU-sized presets follow the reference release (yuanyehome/Apollo-AAAI-2024-Release: its
# full-scripts/*.sh, transformers' AdamW / Trainer defaults, the HF gpt2 and bert-base-uncased
# configs). budget.batch_size is the GLOBAL micro-batch (data-parallel workers split it) and one
# depth is drawn per global micro-batch, as the reference draws one per training_step, the same on
# every rank. What still differs, and why: README "Differences from the reference implementation".
_REFERENCE_RECIPE = {
    "model.n_layers": 12,
    "model.d_model": 768,
    "model.n_heads": 12,
    "model.dropout": 0.1,  # HF gpt2 / bert-base-uncased: embedding, attention, residual dropout
    "stages.unique_layers": (1, 3, 6, 12),  # --apollo_layers 1,3,6,12
    "stages.boundaries": (0.05, 0.1, 0.25),  # --apollo_epoch_list 2,4,10,40: epochs 2, 4, 10 of 40
    "budget.tokens": 10_000_000_000,  # the reference runs 40 epochs; progtune budgets tokens
    "eval.points": 100,
    "eval.max_tokens": 1_048_576,
    "lr.peak": 1e-4,  # --learning_rate 0.0001
    "lr.schedule": "cosine",  # --lr_scheduler_type cosine (to 0)
    "lr.min_ratio": 0.0,
    "lr.warmup_fraction": 0.025,  # --warmup_ratio 0.025
    "lr.weight_decay": 0.01,  # --weight_decay 0.01
    "lr.beta1": 0.9,  # transformers' adam_beta1
    "lr.beta2": 0.999,  # transformers' adam_beta2 (progtune's own default is 0.95)
    "lr.grad_clip": 1.0,  # transformers' max_grad_norm
}
PRESETS["gpt2-base"] = {
    **_REFERENCE_RECIPE,
    "model.arch": "gpt2",
    "model.seq_len": 1024,  # the gpt2 tokenizer's block size
    # The gpt2 tokenizer's 50,257 rounded up to a multiple of 64 (tensor-core friendly shapes):
    # the output head's FLOPs share stays the reference's (within 0.1 %).
    "data.vocab_size": 50_304,
    # run_pretrain_gpt2_apollo_32gpus.sh: 12 per device x 32 GPUs = 384 per micro-batch, 2
    # micro-batches per step: 768 sequences (786,432 tokens) and 2 depth draws per step (the
    # paper's text says 512 sequences for GPT; the released script is followed).
    "budget.batch_size": 384,
    "budget.grad_accum": 2,
}
# No Llama in the reference: llama-base takes gpt2-base's recipe and batch shape, with Llama's
# own architecture choices (grouped-query attention, SwiGLU, and no dropout: HF Llama has only an
# attention dropout, 0 in every published Llama config).
PRESETS["llama-base"] = {
    **PRESETS["gpt2-base"],
    "model.arch": "llama",
    "model.n_kv_heads": 4,
    "model.d_ff": 2048,
    "model.dropout": 0.0,
    "data.vocab_size": 32_768,
}
PRESETS["bert-base"] = {
    **_REFERENCE_RECIPE,
    "model.arch": "bert",
    "model.seq_len": 512,  # bert-base-uncased's max_seq_length
    "model.mask_fraction": 0.15,  # DataCollatorForLanguageModeling's mlm_probability
    "data.vocab_size": 30_528,  # bert-base-uncased's 30,522 rounded up to a multiple of 64
    # run_pretrain_bert_apollo.sh: 48 per device, no accumulation; the paper trains BERT at 768
    # sequences per step, i.e. 16 GPUs (the release's README: 32 GPUs, which would be 1,536).
    "budget.batch_size": 768,
    "budget.grad_accum": 1,
}
DEFAULT_PRESET = "cpu-small"


# ---------------------------------------------------------------------------- knobs
def _knob_types(cls: type, prefix: str = "") -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and is_dataclass(tp):
            out.update(_knob_types(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = tp
    return out


KNOB_TYPES: dict[str, Any] = _knob_types(Config)
"""Dotted knob name -> Python type (int, float, str, bool, tuple[int, ...], tuple[float, ...])."""


def knob_names() -> list[str]:
    """All dotted knob names in declaration order."""
    return list(KNOB_TYPES)


def flatten(cfg: Config) -> dict[str, Any]:
    """The config as {dotted name: value}; lists stay tuples."""
    out: dict[str, Any] = {}
    for name in KNOB_TYPES:
        obj: Any = cfg
        for part in name.split("."):
            obj = getattr(obj, part)
        out[name] = obj
    return out


def list_text(values: tuple) -> str:
    """Readable form of a list knob for Parquet and tables: (1, 3, 6, 12) -> "1-3-6-12"."""
    return "-".join(format(v, "g") for v in values)


# Knobs added after results existed, with the value that trains as the versions before them did:
# at that value a knob stays out of the hash, so earlier experiments keep their config hashes
# (resume, reference reuse, grouping by config_hash in the analysis).
_ADDED_KNOBS: dict[str, Any] = {"sampling.per": "micro_batch"}


def config_hash(cfg: Config) -> str:
    """Stable short hash of every knob except runtime ones that do not change the maths."""
    flat = {k: v for k, v in flatten(cfg).items() if not k.startswith("runtime.")}
    flat.pop("data.cache_dir", None)
    for key, legacy in _ADDED_KNOBS.items():  # at the value that means "as before": left out
        if flat.get(key) == legacy:
            flat.pop(key)
    blob = json.dumps(flat, sort_keys=True, default=list).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------------- overrides
def _set(cfg: Any, parts: list[str], value: Any) -> Any:
    if len(parts) == 1:
        return replace(cfg, **{parts[0]: value})
    child = getattr(cfg, parts[0])
    return replace(cfg, **{parts[0]: _set(child, parts[1:], value)})


def _suggest(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, KNOB_TYPES, n=1)
    return f"; did you mean {close[0]}?" if close else "; see `progtune knobs` for the list"


def with_overrides(
    cfg: Config, overrides: Mapping[str, Any], validate_result: bool = True
) -> Config:
    """Apply {dotted key: value} (values may be CLI strings); unknown keys and bad values raise."""
    for key, raw in flatten_sections(overrides, KNOB_TYPES).items():
        if key not in KNOB_TYPES:
            raise ConfigError(f"unknown config key {key!r}{_suggest(key)}")
        value = coerce_value(key, KNOB_TYPES[key], raw)
        cfg = _set(cfg, key.split("."), value)
    if validate_result:
        validate(cfg)
    return cfg


def preset(name: str) -> Config:
    """A named preset (see PRESETS), validated."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return with_overrides(Config(), PRESETS[name])


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into dotted overrides (nested sections or dotted keys)."""
    return flatten_sections(read_yaml_mapping(path), KNOB_TYPES)


def resolve(
    preset_name: str | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults + preset -> YAML file -> overrides, validated once at the end."""
    name = preset_name or DEFAULT_PRESET
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    merged: dict[str, Any] = dict(PRESETS[name])
    if config_file is not None:
        merged.update(load_yaml(config_file))
    merged.update(flatten_sections(overrides or {}, KNOB_TYPES))
    return with_overrides(Config(), merged)


# ---------------------------------------------------------------------------- validation
def validate(cfg: Config) -> Config:
    """Check every rule (design.md); the first violation raises, naming its key.

    Each section checks its own knobs (config_sections.py; the stages get the model depth they
    must end at); the budget-vs-stages rule spans sections and is here. The order is fixed
    (sections in declaration order, seed last), so a config with two faults always names one.
    """
    m = cfg.model
    m.check()
    cfg.data.check()
    cfg.stages.check(m.n_layers)
    cfg.sampling.check()
    cfg.growth.check()
    cfg.lr.check()
    b = cfg.budget
    b.check()
    n_stages = len(cfg.stages.unique_layers)
    tokens_per_step = b.batch_size * b.grad_accum * m.seq_len
    require(
        b.tokens >= tokens_per_step * max(2, n_stages * 2),
        "budget.tokens",
        f"{b.tokens} is too small for {n_stages} stage(s) at {tokens_per_step} tokens "
        "per step; raise it",
    )
    cfg.eval.check()
    cfg.runtime.check()
    require(cfg.seed >= 0, "seed", f"must be >= 0, got {cfg.seed}")
    return cfg


def scratch_overrides(n_layers: int) -> dict[str, Any]:
    """Training from scratch: all L blocks from step 0, always at full depth."""
    return {
        "stages.unique_layers": [n_layers],
        "stages.boundaries": [],
        "sampling.strategy": "full",
    }


def to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict (tuples as lists) for YAML / JSON output."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_flat(flat: Mapping[str, Any]) -> Config:
    """Rebuild a Config from `flatten` output (e.g. read back from a checkpoint or Parquet row)."""
    return with_overrides(Config(), {k: v for k, v in flat.items() if k in KNOB_TYPES})
