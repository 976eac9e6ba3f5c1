"""The one typed, frozen config tree: presets, YAML files and dotted `KEY=VALUE` overrides."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from progtune.errors import ConfigError

ARCHS = ("gpt2", "llama", "bert")
SAMPLING_STRATEGIES = ("lvps", "uniform", "edge", "full", "none")
GROWTH_OPERATORS = ("interpolation", "stacking")
OPTIMIZER_STATE_POLICIES = ("keep", "reset", "copy")
LR_SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class ModelConfig:
    """Target architecture; the full width is used from step 0, only depth grows."""

    arch: str = "gpt2"  # gpt2 | llama (causal LM) | bert (masked LM)
    n_layers: int = 4  # target depth L
    d_model: int = 128  # hidden width h
    n_heads: int = 4
    n_kv_heads: int = 0  # llama grouped-query attention; 0 = n_heads
    d_ff: int = 0  # MLP width; 0 = 4 h (gpt2, bert) or the llama rule 8h/3 rounded up to 64
    seq_len: int = 128  # training sequence length n_ctx (tokens per sample)
    dropout: float = 0.0
    mask_fraction: float = 0.15  # bert only: share of positions scored by the MLM head


@dataclass(frozen=True)
class DataConfig:
    """Corpus and tokenizer (see progtune.data)."""

    corpus: str = "stdlib"  # stdlib | path, glob or comma list | hf:NAME (needs allow_download)
    text_column: str = "text"  # column read from Parquet / JSONL corpora
    hf_config: str = ""
    hf_split: str = "train"
    allow_download: bool = False  # explicit opt-in for hf:NAME data sets
    tokenizer: str = "bpe"  # bpe = byte-level BPE trained locally; else a tokenizer.json path
    vocab_size: int = 2048
    val_every: int = 20  # every Nth document is held out for evaluation
    max_bytes: int = 0  # 0 = whole corpus; else cap the corpus (tiny presets)
    cache_dir: str = ""  # "" = $PROGTUNE_CACHE or ~/.cache/progtune


@dataclass(frozen=True)
class StagesConfig:
    """Progressive schedule: unique blocks per stage and the growth points."""

    unique_layers: tuple[int, ...] = (1, 2, 4)  # strictly increasing, ends at model.n_layers
    boundaries: tuple[float, ...] = (0.2, 0.5)  # fractions of budget.tokens, in (0, 1)


@dataclass(frozen=True)
class SamplingConfig:
    """Depth sampler drawing the executed depth for every micro-batch (see sampling.py)."""

    strategy: str = "lvps"  # lvps | uniform | edge | full | none
    lvps_low: float = 0.6  # lvps/edge: smallest y is this offset (reference 0.6)
    lvps_high: float = 0.4  # lvps/edge: largest y is r + this offset (reference 0.4)
    edge_slope: float = 20.0  # edge: slope of the logistic in u


@dataclass(frozen=True)
class GrowthConfig:
    """How the unique blocks are copied at a stage boundary (see growth.py)."""

    operator: str = "interpolation"  # interpolation | stacking (also the layer layout)
    optimizer_state: str = "keep"  # keep (reference) | reset | copy


@dataclass(frozen=True)
class LRConfig:
    """AdamW and the learning-rate schedule, one schedule for the whole run."""

    peak: float = 3e-3
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    warmup_fraction: float = 0.025  # of all optimizer steps
    min_ratio: float = 0.0  # final LR as a fraction of peak
    rewarmup_fraction: float = 0.0  # > 0: linear re-warmup over this fraction of steps after growth
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = off


@dataclass(frozen=True)
class BudgetConfig:
    """How much training: tokens, not steps, so runs of different depth compare."""

    tokens: int = 1_000_000
    batch_size: int = 16  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step


@dataclass(frozen=True)
class EvalConfig:
    """Full-depth held-out evaluation."""

    points: int = 20  # evenly spaced evaluations over the run (plus one at every stage boundary)
    max_tokens: int = 65_536  # held-out tokens per evaluation (fixed windows; 0 = all)
    batch_size: int = 32
    at_flops: tuple[float, ...] = ()  # also evaluate once cumulative FLOPs pass each (ASHA rungs)


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the run executes; none of this changes the maths."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 where supported) | bf16 | fp32
    threads: int = 0  # torch threads; 0 = leave torch's default
    checkpoint_every: int = 1  # write a checkpoint every N evaluations (0 = only at the end)


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
    seed: int = 0


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
_BASE = {
    "model.n_layers": 12,
    "model.d_model": 768,
    "model.n_heads": 12,
    "stages.unique_layers": (1, 3, 6, 12),
    "stages.boundaries": (0.05, 0.1, 0.25),  # apollo.md: full-run reference boundaries
    "budget.tokens": 10_000_000_000,
    "budget.batch_size": 32,
    "budget.grad_accum": 16,
    "eval.points": 100,
    "eval.max_tokens": 1_048_576,
    "lr.peak": 1e-4,
    "data.vocab_size": 32_768,
}
PRESETS["gpt2-base"] = {**_BASE, "model.arch": "gpt2", "model.seq_len": 1024}
PRESETS["llama-base"] = {
    **_BASE,
    "model.arch": "llama",
    "model.seq_len": 1024,
    "model.n_kv_heads": 4,
    "model.d_ff": 2048,
}
PRESETS["bert-base"] = {**_BASE, "model.arch": "bert", "model.seq_len": 512}
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


def config_hash(cfg: Config) -> str:
    """Stable short hash of every knob except runtime ones that do not change the maths."""
    flat = {k: v for k, v in flatten(cfg).items() if not k.startswith("runtime.")}
    flat.pop("data.cache_dir", None)
    blob = json.dumps(flat, sort_keys=True, default=list).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------------- parsing
def _parse_text(key: str, text: str) -> Any:
    """A CLI value: YAML scalars and flow lists ("3e-3", "true", "[1,2,4]"), or "1-2-4"."""
    import yaml  # lazy: config must import fast

    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(
            f"{key}={text!r} is not a valid value; quote lists like {key}=[1,2]"
        ) from None


def _number(text: str) -> Any:
    """ "1e-3", "1_000_000", "2e6" -> a number (YAML would read "1e-3" as a string)."""
    for convert in (int, float):
        try:
            return convert(text.strip())
        except ValueError:
            pass
    return text


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check and convert one value to the knob's type; errors name the key and the fix."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        (elem, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str):
            text = value.strip()
            if re.fullmatch(r"\d+(-\d+)+", text):  # the readable Parquet form "1-3-6-12"
                value = [int(p) for p in text.split("-")]
            elif text in ("", "[]", "()"):
                value = []
            else:
                value = _parse_text(key, text if text.startswith("[") else f"[{text}]")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list like [1, 2], got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", elem, v) for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if isinstance(value, numbers.Number) and not isinstance(value, (bool, int, float)):
        value = value.item() if hasattr(value, "item") else value  # numpy scalars from pandas rows
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**62:
            return int(value)
        if isinstance(value, str):
            value = _number(value)
            if isinstance(value, float) and value.is_integer() and abs(value) < 2**62:
                value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            value = _number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - a bug, not input


def _set(cfg: Any, parts: list[str], value: Any) -> Any:
    if len(parts) == 1:
        return replace(cfg, **{parts[0]: value})
    child = getattr(cfg, parts[0])
    return replace(cfg, **{parts[0]: _set(child, parts[1:], value)})


def _flatten_mapping(data: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested YAML sections -> dotted keys; dotted keys may also be used directly."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and name not in KNOB_TYPES:
            out.update(_flatten_mapping(value, f"{name}."))
        else:
            out[name] = value
    return out


def _suggest(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, KNOB_TYPES, n=1)
    return f"; did you mean {close[0]}?" if close else "; see `progtune knobs` for the list"


def with_overrides(
    cfg: Config, overrides: Mapping[str, Any], validate_result: bool = True
) -> Config:
    """Apply {dotted key: value} (values may be CLI strings); unknown keys and bad values raise."""
    for key, raw in _flatten_mapping(overrides).items():
        if key not in KNOB_TYPES:
            raise ConfigError(f"unknown config key {key!r}{_suggest(key)}")
        value = _coerce(key, KNOB_TYPES[key], raw)
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
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass an existing --config FILE")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"config file {str(p)!r} is not valid YAML ({first}); fix its syntax"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of keys to values")
    return _flatten_mapping(data)


def parse_assignments(items: list[str]) -> dict[str, str]:
    """CLI `KEY=VALUE` words -> {key: raw text}; a word without '=' is an error."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}; e.g. lr.peak=1e-3")
        out[key.strip()] = value
    return out


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
    merged.update(_flatten_mapping(overrides or {}))
    return with_overrides(Config(), merged)


# ---------------------------------------------------------------------------- validation
def _need(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def validate(cfg: Config) -> Config:
    """Check every cross-knob rule (design.md); the first violation raises, naming its key."""
    m, s = cfg.model, cfg.stages
    _need(m.arch in ARCHS, "model.arch", f"must be one of {', '.join(ARCHS)}, got {m.arch!r}")
    _need(m.n_layers >= 1, "model.n_layers", f"must be >= 1, got {m.n_layers}")
    _need(m.d_model >= 1, "model.d_model", f"must be >= 1, got {m.d_model}")
    _need(m.n_heads >= 1, "model.n_heads", f"must be >= 1, got {m.n_heads}")
    _need(
        m.d_model % m.n_heads == 0,
        "model.n_heads",
        f"{m.n_heads} heads do not divide model.d_model={m.d_model}; pick a divisor",
    )
    if m.arch == "llama":
        _need(
            (m.d_model // m.n_heads) % 2 == 0,
            "model.d_model",
            "llama needs an even head size (d_model / n_heads) for rotary embeddings",
        )
    kv = m.n_kv_heads or m.n_heads
    _need(
        kv >= 1 and m.n_heads % kv == 0,
        "model.n_kv_heads",
        f"must divide model.n_heads={m.n_heads}, got {m.n_kv_heads}",
    )
    _need(m.d_ff >= 0, "model.d_ff", f"must be >= 0 (0 = default), got {m.d_ff}")
    _need(m.seq_len >= 2, "model.seq_len", f"must be >= 2, got {m.seq_len}")
    _need(0.0 <= m.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    _need(
        0.0 < m.mask_fraction < 1.0,
        "model.mask_fraction",
        f"must be in (0, 1), got {m.mask_fraction}",
    )

    d = cfg.data
    _need(bool(d.corpus.strip()), "data.corpus", "must not be empty (default: stdlib)")
    _need(
        d.vocab_size >= 259,
        "data.vocab_size",
        f"must be >= 259 (256 bytes + 3 specials), got {d.vocab_size}",
    )
    _need(d.vocab_size <= 1_000_000, "data.vocab_size", f"must be <= 1000000, got {d.vocab_size}")
    _need(d.val_every >= 2, "data.val_every", f"must be >= 2, got {d.val_every}")
    _need(d.max_bytes >= 0, "data.max_bytes", f"must be >= 0 (0 = no cap), got {d.max_bytes}")

    ul, bd = s.unique_layers, s.boundaries
    _need(len(ul) >= 1, "stages.unique_layers", "must list at least one stage, e.g. [4]")
    _need(all(k >= 1 for k in ul), "stages.unique_layers", f"must be >= 1 each, got {list(ul)}")
    _need(
        all(a < b for a, b in pairwise(ul)),
        "stages.unique_layers",
        f"must be strictly increasing, got {list(ul)}",
    )
    _need(
        ul[-1] == m.n_layers,
        "stages.unique_layers",
        f"must end at model.n_layers={m.n_layers}, got {list(ul)}",
    )
    _need(
        len(bd) == len(ul) - 1,
        "stages.boundaries",
        f"needs {len(ul) - 1} value(s) (one less than stages.unique_layers {list(ul)}), "
        f"got {list(bd)}",
    )
    _need(
        all(0.0 < b < 1.0 for b in bd), "stages.boundaries", f"must lie in (0, 1), got {list(bd)}"
    )
    _need(
        all(a < b for a, b in pairwise(bd)),
        "stages.boundaries",
        f"must be strictly increasing, got {list(bd)}",
    )

    sp = cfg.sampling
    _need(
        sp.strategy in SAMPLING_STRATEGIES,
        "sampling.strategy",
        f"must be one of {', '.join(SAMPLING_STRATEGIES)}, got {sp.strategy!r}",
    )
    _need(sp.lvps_low > 0, "sampling.lvps_low", f"must be > 0, got {sp.lvps_low}")
    _need(sp.lvps_high >= 0, "sampling.lvps_high", f"must be >= 0, got {sp.lvps_high}")
    _need(sp.edge_slope > 0, "sampling.edge_slope", f"must be > 0, got {sp.edge_slope}")
    g = cfg.growth
    _need(
        g.operator in GROWTH_OPERATORS,
        "growth.operator",
        f"must be one of {', '.join(GROWTH_OPERATORS)}, got {g.operator!r}",
    )
    _need(
        g.optimizer_state in OPTIMIZER_STATE_POLICIES,
        "growth.optimizer_state",
        f"must be one of {', '.join(OPTIMIZER_STATE_POLICIES)}, got {g.optimizer_state!r}",
    )

    lr = cfg.lr
    _need(lr.peak > 0, "lr.peak", f"must be > 0, got {lr.peak}")
    _need(
        lr.schedule in LR_SCHEDULES,
        "lr.schedule",
        f"must be one of {', '.join(LR_SCHEDULES)}, got {lr.schedule!r}",
    )
    _need(
        0 <= lr.warmup_fraction < 1,
        "lr.warmup_fraction",
        f"must be in [0, 1), got {lr.warmup_fraction}",
    )
    _need(0 <= lr.min_ratio <= 1, "lr.min_ratio", f"must be in [0, 1], got {lr.min_ratio}")
    _need(
        0 <= lr.rewarmup_fraction < 1,
        "lr.rewarmup_fraction",
        f"must be in [0, 1), got {lr.rewarmup_fraction}",
    )
    _need(lr.weight_decay >= 0, "lr.weight_decay", f"must be >= 0, got {lr.weight_decay}")
    _need(0 <= lr.beta1 < 1, "lr.beta1", f"must be in [0, 1), got {lr.beta1}")
    _need(0 <= lr.beta2 < 1, "lr.beta2", f"must be in [0, 1), got {lr.beta2}")
    _need(lr.grad_clip >= 0, "lr.grad_clip", f"must be >= 0 (0 = off), got {lr.grad_clip}")

    b = cfg.budget
    _need(b.batch_size >= 1, "budget.batch_size", f"must be >= 1, got {b.batch_size}")
    _need(b.grad_accum >= 1, "budget.grad_accum", f"must be >= 1, got {b.grad_accum}")
    _need(b.tokens > 0, "budget.tokens", f"must be > 0, got {b.tokens}")
    tokens_per_step = b.batch_size * b.grad_accum * m.seq_len
    _need(
        b.tokens >= tokens_per_step * max(2, len(ul) * 2),
        "budget.tokens",
        f"{b.tokens} is too small for {len(ul)} stage(s) at {tokens_per_step} tokens "
        "per step; raise it",
    )
    e = cfg.eval
    _need(e.points >= 1, "eval.points", f"must be >= 1, got {e.points}")
    _need(e.max_tokens >= 0, "eval.max_tokens", f"must be >= 0 (0 = all), got {e.max_tokens}")
    _need(e.batch_size >= 1, "eval.batch_size", f"must be >= 1, got {e.batch_size}")
    _need(all(f > 0 for f in e.at_flops), "eval.at_flops", f"must be > 0, got {list(e.at_flops)}")

    r = cfg.runtime
    _need(
        r.device == "auto" or r.device == "cpu" or r.device.startswith("cuda"),
        "runtime.device",
        f"must be auto, cpu, cuda or cuda:N, got {r.device!r}",
    )
    _need(
        r.precision in PRECISIONS,
        "runtime.precision",
        f"must be one of {', '.join(PRECISIONS)}, got {r.precision!r}",
    )
    _need(r.threads >= 0, "runtime.threads", f"must be >= 0 (0 = default), got {r.threads}")
    _need(
        r.checkpoint_every >= 0,
        "runtime.checkpoint_every",
        f"must be >= 0, got {r.checkpoint_every}",
    )
    _need(cfg.seed >= 0, "seed", f"must be >= 0, got {cfg.seed}")
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
