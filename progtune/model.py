"""transformers models built from config, run through a per-pass layer plan over shared blocks."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from progtune.chunked_loss import LOSS_CHUNK_ROWS, chunked_cross_entropy
from progtune.config import ModelConfig
from progtune.growth import growth_map, layer_plan


def d_ff(m: ModelConfig) -> int:
    """MLP width: configured, else 4h (GPT-2, BERT) or Llama's 8h/3 rounded up to 64."""
    if m.d_ff:
        return m.d_ff
    if m.arch == "llama":
        return -(-(8 * m.d_model // 3) // 64) * 64
    return 4 * m.d_model


def hf_config(m: ModelConfig, vocab_size: int, eos_id: int = 0, pad_id: int = 0):
    """The transformers config of the L-layer target model (no download: built from numbers)."""
    from transformers import BertConfig, GPT2Config, LlamaConfig

    layers = m.n_layers
    common = {
        "vocab_size": vocab_size,
        "use_cache": False,  # a KV cache silently gives wrong losses with repeated blocks
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
    }
    if m.arch == "gpt2":
        cfg = GPT2Config(
            n_layer=layers,
            n_embd=m.d_model,
            n_head=m.n_heads,
            n_inner=d_ff(m),
            n_positions=m.seq_len,
            resid_pdrop=m.dropout,
            embd_pdrop=m.dropout,
            attn_pdrop=m.dropout,
            **common,
        )
    elif m.arch == "llama":
        cfg = LlamaConfig(
            num_hidden_layers=layers,
            hidden_size=m.d_model,
            num_attention_heads=m.n_heads,
            num_key_value_heads=m.n_kv_heads or m.n_heads,
            intermediate_size=d_ff(m),
            max_position_embeddings=m.seq_len,
            attention_dropout=m.dropout,
            tie_word_embeddings=False,
            **common,
        )
    else:
        cfg = BertConfig(
            num_hidden_layers=layers,
            hidden_size=m.d_model,
            num_attention_heads=m.n_heads,
            intermediate_size=d_ff(m),
            max_position_embeddings=m.seq_len,
            hidden_dropout_prob=m.dropout,
            attention_probs_dropout_prob=m.dropout,
            **common,
        )
    cfg._attn_implementation = "sdpa"
    return cfg


def build_hf_model(
    m: ModelConfig,
    vocab_size: int,
    device: str | torch.device = "cpu",
    eos_id: int = 0,
    pad_id: int = 0,
):
    """A freshly initialised transformers model of the target size (`device="meta"`: no memory)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForMaskedLM if m.arch == "bert" else AutoModelForCausalLM
    with torch.device(device):
        return auto.from_config(
            hf_config(m, vocab_size, eos_id, pad_id), attn_implementation="sdpa"
        )


# ---------------------------------------------------------------------------- FLOPs
def block_matmul_flops(m: ModelConfig) -> float:
    """Forward matmul FLOPs per token of one block (GPT-2/BERT: 24 h^2 at f = 4h)."""
    h, f = float(m.d_model), float(d_ff(m))
    if m.arch == "llama":
        h_kv = float((m.n_kv_heads or m.n_heads) * (m.d_model // m.n_heads))
        return 2.0 * (2 * h * h + 2 * h * h_kv + 3 * h * f)
    return 2.0 * (4 * h * h + 2 * h * f)


def head_flops(m: ModelConfig, vocab_size: int) -> float:
    """Forward FLOPs per scored position of the output head (BERT adds its dense transform)."""
    h = float(m.d_model)
    extra = 2.0 * h * h if m.arch == "bert" else 0.0
    return 2.0 * h * vocab_size + extra


def train_flops(
    m: ModelConfig, vocab_size: int, depth: int, n_tokens: int, n_scored: int | None = None
) -> float:
    """Forward + backward FLOPs (3x forward) of one micro-batch run at executed depth `depth`.

    Blocks: matmuls plus full attention 4 n_ctx h per token; head: only the scored positions
    (all tokens for causal LMs, the masked ones for BERT). Embeddings excluded; float64 always.
    """
    scored = n_tokens if n_scored is None else n_scored
    per_token_blocks = depth * (block_matmul_flops(m) + 4.0 * m.seq_len * m.d_model)
    return 3.0 * (float(n_tokens) * per_token_blocks + float(scored) * head_flops(m, vocab_size))


def flops_per_token(m: ModelConfig, vocab_size: int, depth: float) -> float:
    """Training FLOPs per token at (mean) depth `depth` (BERT: at the configured mask share)."""
    scored = m.mask_fraction if m.arch == "bert" else 1.0
    per_block = block_matmul_flops(m) + 4.0 * m.seq_len * m.d_model
    return 3.0 * (depth * per_block + scored * head_flops(m, vocab_size))


# ---------------------------------------------------------------------------- the model
_CONTAINERS = {
    "gpt2": ("transformer", "h"),
    "llama": ("model", "layers"),
    "bert": ("bert.encoder", "layer"),
}


@dataclass
class Loss:
    value: torch.Tensor  # mean cross-entropy over scored positions
    n_scored: int  # positions the head scored (tokens for causal LMs, masked ones for BERT)


class ProgressiveLM(nn.Module):
    """A transformers LM whose L virtual positions re-use k unique blocks (apollo.md 1-2).

    The unique blocks live in `self.blocks`; the transformers model's own layer list is replaced by
    a plain (unregistered) Python list that `set_depth` fills per pass, so parameters are owned once
    and `state_dict` holds only the unique blocks.
    """

    def __init__(
        self,
        m: ModelConfig,
        vocab_size: int,
        k: int,
        operator: str,
        eos_id: int = 0,
        pad_id: int = 0,
    ):
        super().__init__()
        self.m, self.vocab_size, self.operator = m, vocab_size, operator
        self.special = (eos_id, pad_id)
        self.hf = build_hf_model(m, vocab_size, eos_id=eos_id, pad_id=pad_id)
        # transformers' GPT-2 reads input_ids[:, [-1, 0]] back to the host on every forward to
        # warn about padding (no attention mask is passed: windows are never padded). The
        # embeddings took their padding index at construction; export_hf builds a fresh model.
        self.hf.config.pad_token_id = None
        parent = self._container_parent()
        attr = _CONTAINERS[m.arch][1]
        all_blocks = list(getattr(parent, attr))
        del parent._modules[attr]
        self.blocks = nn.ModuleList(all_blocks[:k])
        self.loss_chunk_rows = LOSS_CHUNK_ROWS  # rows of logits alive at once (tests shrink it)
        self.set_depth(k)

    @property
    def k(self) -> int:
        return len(self.blocks)

    def _container_parent(self) -> nn.Module:
        obj: nn.Module = self.hf
        for part in _CONTAINERS[self.m.arch][0].split("."):
            obj = getattr(obj, part)
        return obj

    def set_depth(self, depth: int) -> list[int]:
        """Lay the unique blocks out over `depth` positions for the next pass; returns the plan."""
        plan = layer_plan(self.operator, self.k, depth)
        # A plain list, not a ModuleList: the blocks stay registered only under self.blocks.
        object.__setattr__(
            self._container_parent(), _CONTAINERS[self.m.arch][1], [self.blocks[j] for j in plan]
        )
        return plan

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        scored_index: torch.Tensor | None = None,
    ) -> Loss:
        """Mean cross-entropy. Causal: `targets` are the next tokens. BERT: -100 where unscored.

        The head's logits exist only `loss_chunk_rows` rows at a time (chunked_loss.py).
        BERT: `scored_index`, the flat positions of the scored tokens computed on the host by
        the caller, spares the device-to-host read that counting them on the device needs.
        """
        if self.m.arch == "bert":
            hidden = self.hf.bert(input_ids=input_ids).last_hidden_state
            if scored_index is None:
                scored_index = (targets.reshape(-1) != -100).nonzero().squeeze(1)
            scored_index = scored_index.to(hidden.device)
            head = self.hf.cls.predictions
            # the head runs only where it scores
            rows = head.transform(hidden.reshape(-1, hidden.size(-1)).index_select(0, scored_index))
            labels = targets.reshape(-1).index_select(0, scored_index)
            loss = chunked_cross_entropy(
                rows, head.decoder.weight, head.decoder.bias, labels, self.loss_chunk_rows
            )
            return Loss(loss, int(scored_index.numel()))
        base = self.hf.transformer if self.m.arch == "gpt2" else self.hf.model
        hidden = base(input_ids=input_ids, use_cache=False).last_hidden_state
        head = self.hf.lm_head
        loss = chunked_cross_entropy(hidden, head.weight, head.bias, targets, self.loss_chunk_rows)
        return Loss(loss, targets.numel())

    @torch.no_grad()
    def grow(self, k_new: int) -> list[int]:
        """Untie into k_new blocks: new block j copies old block map[j] (apollo.md 4).

        Existing block objects keep their identity (their optimizer state follows the `keep`
        policy); blocks beyond the old count are new objects. Copies come from a snapshot, so no
        source is overwritten before it is read. Returns the map.
        """
        mapping = growth_map(self.operator, self.k, k_new)
        snapshot = [copy.deepcopy(b) for b in self.blocks]
        for j, src in enumerate(mapping):
            if j < self.k:
                self.blocks[j].load_state_dict(snapshot[src].state_dict())
            else:
                self.blocks.append(copy.deepcopy(snapshot[src]))
        self.set_depth(k_new)
        return mapping

    def export_hf(self):
        """A standalone transformers model with L untied blocks, for `save_pretrained`."""
        out = build_hf_model(self.m, self.vocab_size, "cpu", *self.special)
        state = dict(self.hf.state_dict())
        plan = layer_plan(self.operator, self.k, self.m.n_layers)
        prefix = f"{_CONTAINERS[self.m.arch][0]}.{_CONTAINERS[self.m.arch][1]}"
        for i, j in enumerate(plan):
            for name, tensor in self.blocks[j].state_dict().items():
                state[f"{prefix}.{i}.{name}"] = tensor.detach().clone()
        missing, unexpected = out.load_state_dict(state, strict=False)
        # Tied output heads appear as missing keys; anything else would be a bug.
        assert not unexpected, unexpected
        assert all("lm_head" in k or "decoder" in k for k in missing), missing
        return out
