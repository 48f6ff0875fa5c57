"""One table entry per supported model family: everything architecture-specific lives here.

The algorithms (importance, projection, pruning, merge) read these entries and never branch on
``model_type``. A linear layer is described by which of its sides touch the residual stream
(``HIDDEN``) or the FFN intermediate (``FFN``); a side marked ``None`` keeps its width (heads and
head_dim never shrink).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from transformers import PretrainedConfig

HIDDEN = "hidden"
FFN = "ffn"
VOCAB = "vocab"  # embedding / LM-head rows: gathered (never projected) when the vocabulary is pruned


@dataclass(frozen=True)
class LinearSpec:
    """A linear layer inside a decoder block, by its path relative to the block."""

    path: str
    out_dim: str | None  # HIDDEN, FFN or None (unchanged)
    in_dim: str | None
    out_chunks: int = 1  # fused projections stack equal chunks on the output side (phi3 gate_up)


@dataclass(frozen=True)
class ArchSpec:
    """Facts about one ``model_type``, enough to project, prune and merge it."""

    model_type: str
    linears: tuple[LinearSpec, ...]
    # RMSNorms over d_model inside each block (gathered at the kept hidden indices).
    block_norms: tuple[str, ...]
    # Module whose input is the FFN intermediate activation (its input columns are d_ff channels).
    ffn_down: str = "mlp.down_proj"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    layers: str = "model.layers"
    # Gemma RMSNorm computes x̂ · (1 + w): the effective scale is w + norm_offset.
    norm_offset: float = 0.0
    # Gemma multiplies embeddings by sqrt(hidden_size), so a smaller hidden changes the scale.
    scaled_embedding: bool = False

    def embedding_scale(self, hidden_size: int) -> float:
        return math.sqrt(hidden_size) if self.scaled_embedding else 1.0


_LLAMA_LINEARS = (
    LinearSpec("self_attn.q_proj", None, HIDDEN),
    LinearSpec("self_attn.k_proj", None, HIDDEN),
    LinearSpec("self_attn.v_proj", None, HIDDEN),
    LinearSpec("self_attn.o_proj", HIDDEN, None),
    LinearSpec("mlp.gate_proj", FFN, HIDDEN),
    LinearSpec("mlp.up_proj", FFN, HIDDEN),
    LinearSpec("mlp.down_proj", HIDDEN, FFN),
)
_LLAMA_NORMS = ("input_layernorm", "post_attention_layernorm")

ARCHITECTURES: dict[str, ArchSpec] = {
    spec.model_type: spec
    for spec in (
        ArchSpec("llama", _LLAMA_LINEARS, _LLAMA_NORMS),
        ArchSpec("mistral", _LLAMA_LINEARS, _LLAMA_NORMS),
        # q/k/v biases sit on the head side, which never shrinks: they are carried over unchanged.
        ArchSpec("qwen2", _LLAMA_LINEARS, _LLAMA_NORMS),
        # q_norm/k_norm act on head_dim, which never shrinks: carried over whole (and trainable).
        ArchSpec("qwen3", _LLAMA_LINEARS, _LLAMA_NORMS),
        ArchSpec(
            "gemma3_text",
            _LLAMA_LINEARS,
            (
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            ),
            norm_offset=1.0,
            scaled_embedding=True,
        ),
        ArchSpec(
            "phi3",
            (
                LinearSpec("self_attn.qkv_proj", None, HIDDEN),
                LinearSpec("self_attn.o_proj", HIDDEN, None),
                LinearSpec("mlp.gate_up_proj", FFN, HIDDEN, out_chunks=2),
                LinearSpec("mlp.down_proj", HIDDEN, FFN),
            ),
            _LLAMA_NORMS,
        ),
    )
}


def get_arch_spec(config: PretrainedConfig) -> ArchSpec:
    """The table entry for ``config.model_type``; ``ValueError`` naming the supported types otherwise."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"model_type {model_type!r} is not supported; supported model types: "
            f"{', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type]


def head_dim(config: PretrainedConfig) -> int:
    """Per-head width; Qwen2/Phi3 configs don't store it and derive it from hidden_size."""
    value = getattr(config, "head_dim", None)
    return int(value) if value else config.hidden_size // config.num_attention_heads
