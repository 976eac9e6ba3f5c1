"""The config's sections as frozen dataclasses, each beside the checks on its own knobs."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from progtune.errors import ConfigError

ARCHS = ("gpt2", "llama", "bert")
SAMPLING_STRATEGIES = ("lvps", "uniform", "edge", "full", "none")
GROWTH_OPERATORS = ("interpolation", "stacking")
OPTIMIZER_STATE_POLICIES = ("keep", "reset", "copy")
LR_SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SAMPLING_PER = ("micro_batch", "step")


def require(ok: bool, key: str, message: str) -> None:
    """Raise ConfigError("KEY: message") unless `ok`; every rule names the knob to fix."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _one_of(value: str, choices: tuple[str, ...], key: str) -> None:
    require(value in choices, key, f"must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Target architecture; the full width is used from step 0, only depth grows."""

    arch: str = "gpt2"  # gpt2 | llama (causal LM) | bert (masked LM)
    n_layers: int = 4  # target depth L
    d_model: int = 128  # hidden width h
    n_heads: int = 4  # attention heads (divide d_model)
    n_kv_heads: int = 0  # llama grouped-query attention; 0 = n_heads
    d_ff: int = 0  # MLP width; 0 = 4 h (gpt2, bert) or the llama rule 8h/3 rounded up to 64
    seq_len: int = 128  # training sequence length n_ctx (tokens per sample)
    dropout: float = 0.0  # dropout probability (embeddings, attention, residual)
    mask_fraction: float = 0.15  # bert only: share of positions scored by the MLM head

    def check(self) -> None:
        """The first broken rule of this section raises ConfigError naming its key."""
        _one_of(self.arch, ARCHS, "model.arch")
        require(self.n_layers >= 1, "model.n_layers", f"must be >= 1, got {self.n_layers}")
        require(self.d_model >= 1, "model.d_model", f"must be >= 1, got {self.d_model}")
        require(self.n_heads >= 1, "model.n_heads", f"must be >= 1, got {self.n_heads}")
        require(
            self.d_model % self.n_heads == 0,
            "model.n_heads",
            f"{self.n_heads} heads do not divide model.d_model={self.d_model}; pick a divisor",
        )
        if self.arch == "llama":
            require(
                (self.d_model // self.n_heads) % 2 == 0,
                "model.d_model",
                "llama needs an even head size (d_model / n_heads) for rotary embeddings",
            )
        kv = self.n_kv_heads or self.n_heads
        require(
            kv >= 1 and self.n_heads % kv == 0,
            "model.n_kv_heads",
            f"must divide model.n_heads={self.n_heads}, got {self.n_kv_heads}",
        )
        require(self.d_ff >= 0, "model.d_ff", f"must be >= 0 (0 = default), got {self.d_ff}")
        require(self.seq_len >= 2, "model.seq_len", f"must be >= 2, got {self.seq_len}")
        require(
            0.0 <= self.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {self.dropout}"
        )
        require(
            0.0 < self.mask_fraction < 1.0,
            "model.mask_fraction",
            f"must be in (0, 1), got {self.mask_fraction}",
        )


@dataclass(frozen=True)
class DataConfig:
    """Corpus and tokenizer (see progtune.data)."""

    corpus: str = "stdlib"  # stdlib | path, glob or comma list | hf:NAME (needs allow_download)
    text_column: str = "text"  # column read from Parquet / JSONL corpora
    hf_config: str = ""  # hf:NAME only: the data set's config name
    hf_split: str = "train"  # hf:NAME only: the split to read
    allow_download: bool = False  # explicit opt-in for hf:NAME data sets
    tokenizer: str = "bpe"  # bpe = byte-level BPE trained locally; else a tokenizer.json path
    vocab_size: int = 2048  # tokenizer vocabulary size V (BPE trained to it)
    val_every: int = 20  # every Nth document is held out for evaluation
    max_bytes: int = 0  # 0 = whole corpus; else cap the corpus (tiny presets)
    max_tokens: int = 0  # 0 = all; else stop tokenizing after this many tokens (both splits)
    cache_dir: str = ""  # "" = $PROGTUNE_CACHE or ~/.cache/progtune

    def check(self) -> None:
        """The first broken rule of this section raises ConfigError naming its key."""
        require(bool(self.corpus.strip()), "data.corpus", "must not be empty (default: stdlib)")
        require(
            self.vocab_size >= 259,
            "data.vocab_size",
            f"must be >= 259 (256 bytes + 3 specials), got {self.vocab_size}",
        )
        require(
            self.vocab_size <= 1_000_000,
            "data.vocab_size",
            f"must be <= 1000000, got {self.vocab_size}",
        )
        require(self.val_every >= 2, "data.val_every", f"must be >= 2, got {self.val_every}")
        require(
            self.max_bytes >= 0,
            "data.max_bytes",
            f"must be >= 0 (0 = no cap), got {self.max_bytes}",
        )
        require(
            self.max_tokens >= 0,
            "data.max_tokens",
            f"must be >= 0 (0 = no cap), got {self.max_tokens}",
        )


@dataclass(frozen=True)
class StagesConfig:
    """Progressive schedule: unique blocks per stage and the growth points."""

    unique_layers: tuple[int, ...] = (1, 2, 4)  # strictly increasing, ends at model.n_layers
    boundaries: tuple[float, ...] = (0.2, 0.5)  # fractions of budget.tokens, in (0, 1)

    def check(self, n_layers: int) -> None:
        """Like the other sections; `n_layers` is model.n_layers, where the last stage ends."""
        ul, bd = self.unique_layers, self.boundaries
        require(len(ul) >= 1, "stages.unique_layers", "must list at least one stage, e.g. [4]")
        require(
            all(k >= 1 for k in ul), "stages.unique_layers", f"must be >= 1 each, got {list(ul)}"
        )
        require(
            all(a < b for a, b in pairwise(ul)),
            "stages.unique_layers",
            f"must be strictly increasing, got {list(ul)}",
        )
        require(
            ul[-1] == n_layers,
            "stages.unique_layers",
            f"must end at model.n_layers={n_layers}, got {list(ul)}",
        )
        require(
            len(bd) == len(ul) - 1,
            "stages.boundaries",
            f"needs {len(ul) - 1} value(s) (one less than stages.unique_layers {list(ul)}), "
            f"got {list(bd)}",
        )
        require(
            all(0.0 < b < 1.0 for b in bd),
            "stages.boundaries",
            f"must lie in (0, 1), got {list(bd)}",
        )
        require(
            all(a < b for a, b in pairwise(bd)),
            "stages.boundaries",
            f"must be strictly increasing, got {list(bd)}",
        )


@dataclass(frozen=True)
class SamplingConfig:
    """Depth sampler drawing the executed depth of every global micro-batch (see sampling.py)."""

    strategy: str = "lvps"  # lvps | uniform | edge | full | none
    lvps_low: float = 0.6  # lvps/edge: smallest y is this offset (reference 0.6)
    lvps_high: float = 0.4  # lvps/edge: largest y is r + this offset (reference 0.4)
    edge_slope: float = 20.0  # edge: slope of the logistic in u
    per: str = "micro_batch"  # micro_batch (reference: one depth per global micro-batch) | step

    def check(self) -> None:
        """The first broken rule of this section raises ConfigError naming its key."""
        _one_of(self.strategy, SAMPLING_STRATEGIES, "sampling.strategy")
        _one_of(self.per, SAMPLING_PER, "sampling.per")
        require(self.lvps_low > 0, "sampling.lvps_low", f"must be > 0, got {self.lvps_low}")
        require(self.lvps_high >= 0, "sampling.lvps_high", f"must be >= 0, got {self.lvps_high}")
        require(self.edge_slope > 0, "sampling.edge_slope", f"must be > 0, got {self.edge_slope}")


@dataclass(frozen=True)
class GrowthConfig:
    """How the unique blocks are copied at a stage boundary (see growth.py)."""

    operator: str = "interpolation"  # interpolation | stacking (also the layer layout)
    optimizer_state: str = "keep"  # keep (reference) | reset | copy

    def check(self) -> None:
        """The first broken rule of this section raises ConfigError naming its key."""
        _one_of(self.operator, GROWTH_OPERATORS, "growth.operator")
        _one_of(self.optimizer_state, OPTIMIZER_STATE_POLICIES, "growth.optimizer_state")


@dataclass(frozen=True)
class LRConfig:
    """AdamW and the learning-rate schedule, one schedule for the whole run."""

    peak: float = 3e-3  # peak learning rate (AdamW)
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    warmup_fraction: float = 0.025  # of all optimizer steps
    min_ratio: float = 0.0  # final LR as a fraction of peak
    rewarmup_fraction: float = 0.0  # > 0: linear re-warmup over this fraction of steps after growth
    weight_decay: float = 0.01  # AdamW weight decay (not on biases / norms)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    grad_clip: float = 1.0  # 0 = off

    def check(self) -> None:
        """The first broken rule of this section raises ConfigError naming its key."""
        require(self.peak > 0, "lr.peak", f"must be > 0, got {self.peak}")
        _one_of(self.schedule, LR_SCHEDULES, "lr.schedule")
        require(
            0 <= self.warmup_fraction < 1,
            "lr.warmup_fraction",
            f"must be in [0, 1), got {self.warmup_fraction}",
        )
        require(
            0 <= self.min_ratio <= 1, "lr.min_ratio", f"must be in [0, 1], got {self.min_ratio}"
        )
        require(
            0 <= self.rewarmup_fraction < 1,
            "lr.rewarmup_fraction",
            f"must be in [0, 1), got {self.rewarmup_fraction}",
        )
        require(self.weight_decay >= 0, "lr.weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(0 <= self.beta1 < 1, "lr.beta1", f"must be in [0, 1), got {self.beta1}")
        require(0 <= self.beta2 < 1, "lr.beta2", f"must be in [0, 1), got {self.beta2}")
        require(
            self.grad_clip >= 0, "lr.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}"
        )


@dataclass(frozen=True)
class BudgetConfig:
    """How much training: tokens, not steps, so runs of different depth compare."""

    tokens: int = 1_000_000  # training tokens of the whole run (all stages)
    batch_size: int = 16  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step

    def check(self) -> None:
        """The first broken rule of this section raises ConfigError naming its key."""
        require(self.batch_size >= 1, "budget.batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.grad_accum >= 1, "budget.grad_accum", f"must be >= 1, got {self.grad_accum}")
        require(self.tokens > 0, "budget.tokens", f"must be > 0, got {self.tokens}")


@dataclass(frozen=True)
class EvalConfig:
    """Full-depth held-out evaluation."""

    points: int = 20  # evenly spaced evaluations over the run (plus one at every stage boundary)
    max_tokens: int = 65_536  # held-out tokens per evaluation (fixed windows; 0 = all)
    batch_size: int = 32  # held-out windows per evaluation batch
    at_flops: tuple[float, ...] = ()  # also evaluate once cumulative FLOPs pass each (ASHA rungs)

    def check(self) -> None:
        """The first broken rule of this section raises ConfigError naming its key."""
        require(self.points >= 1, "eval.points", f"must be >= 1, got {self.points}")
        require(
            self.max_tokens >= 0,
            "eval.max_tokens",
            f"must be >= 0 (0 = all), got {self.max_tokens}",
        )
        require(self.batch_size >= 1, "eval.batch_size", f"must be >= 1, got {self.batch_size}")
        require(
            all(f > 0 for f in self.at_flops),
            "eval.at_flops",
            f"must be > 0, got {list(self.at_flops)}",
        )


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the run executes; none of this changes the maths."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 if native, else CUDA fp16 / fp32) | bf16 | fp16 | fp32
    threads: int = 0  # torch threads; 0 = leave torch's default
    checkpoint_every: int = 1  # write a checkpoint every N evaluations (0 = only at the end)
    compile: bool = False  # torch.compile every unique block (again after each growth)

    def check(self) -> None:
        """The first broken rule of this section raises ConfigError naming its key."""
        require(
            self.device in ("auto", "cpu") or self.device.startswith("cuda"),
            "runtime.device",
            f"must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )
        _one_of(self.precision, PRECISIONS, "runtime.precision")
        require(
            self.threads >= 0, "runtime.threads", f"must be >= 0 (0 = default), got {self.threads}"
        )
        require(
            self.checkpoint_every >= 0,
            "runtime.checkpoint_every",
            f"must be >= 0, got {self.checkpoint_every}",
        )
