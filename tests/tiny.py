"""Tiny random models of every supported family, so each behaviour is tested over the whole table."""

from __future__ import annotations

import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from hf_projcomp.architectures import ARCHITECTURES, ffn_size, head_dim

TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

# model_type -> facts for an independent parameter-count formula: (tied embeddings, q/k/v bias,
# q/k norm: None, "head" (head_dim) or "full" (all heads), d_model norms per block, MLP matrices,
# LayerNorm bias, biases on o_proj and the MLP, LM-head bias)
FAMILIES = {
    "llama": (False, False, None, 2, 3, False, False, False),
    "mistral": (False, False, None, 2, 3, False, False, False),
    "qwen2": (False, True, None, 2, 3, False, False, False),
    "qwen3": (False, False, "head", 2, 3, False, False, False),
    "gemma3_text": (True, False, "head", 4, 3, False, False, False),
    "phi3": (False, False, None, 2, 3, False, False, False),
    "granite": (False, False, None, 2, 3, False, False, False),
    "smollm3": (True, False, None, 2, 3, False, False, False),
    "olmo2": (False, False, "full", 2, 3, False, False, False),
    "gemma2": (True, False, None, 4, 3, False, False, False),
    "starcoder2": (True, True, None, 2, 2, True, True, False),
    "phi": (False, True, None, 1, 2, True, True, True),
    "gpt_neox": (False, True, None, 2, 2, True, True, False),
    "stablelm": (False, False, None, 2, 3, True, False, False),
    "gpt2": (True, True, None, 2, 2, True, True, False),
    "mixtral": (False, False, None, 2, 3, False, False, False),
    "qwen3_moe": (False, False, "head", 2, 3, False, False, False),
    "olmoe": (False, False, "full", 2, 3, False, False, False),
}
MODEL_TYPES = list(FAMILIES)
# Config fields a family doesn't have (GPT-NeoX: no GQA, head_dim derived).
_NOT_FIELDS = {
    "gpt_neox": ("num_key_value_heads", "head_dim"),
    "stablelm": ("head_dim",),
    "gpt2": ("num_key_value_heads", "head_dim", "intermediate_size"),
}
# Fields only a family has (four experts, two routed per token).
_FIELDS = {
    "gpt2": dict(n_inner=TINY["intermediate_size"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2),
    "qwen3_moe": dict(
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=TINY["intermediate_size"],
        decoder_sparse_step=1,
        mlp_only_layers=[],
    ),
}


def target_sizes(model_type: str, hidden_size: int = 48, intermediate_size: int = 64, config=None) -> dict[str, int]:
    """The tests' usual target widths; d_model stays where the family (or ``config``) cannot shrink it."""
    if ARCHITECTURES[model_type].fixed_hidden(config or tiny_config(model_type)):
        hidden_size = TINY["hidden_size"]
    return dict(hidden_size=hidden_size, intermediate_size=intermediate_size)


def tiny_config(model_type: str, without: tuple[str, ...] = (), **overrides):
    """The tiny config of a family; ``without`` leaves fields to the family's default (``head_dim``)."""
    fields = {k: v for k, v in TINY.items() if k not in _NOT_FIELDS.get(model_type, ()) + without}
    family = {k: v for k, v in _FIELDS.get(model_type, {}).items() if k not in without}
    return AutoConfig.for_model(model_type, **{**fields, **family, **overrides})


def tiny_model(model_type: str, seed: int = 0, without: tuple[str, ...] = (), **overrides) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = tiny_config(model_type, without, **overrides)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        # Random init leaves norms at 1 (or 0 for Gemma's 1+w); make every kept index matter.
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.2)
    return model


def expected_num_parameters(model_type: str, config) -> int:
    tied, bias, qk_norm, block_norms, mlp, norm_bias, out_bias, head_bias = FAMILIES[model_type]
    d, i, v, layers = config.hidden_size, ffn_size(config), config.vocab_size, config.num_hidden_layers
    experts = ARCHITECTURES[model_type].ffn_groups(config)
    hd = head_dim(config)
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    q, kv = config.num_attention_heads * hd, kv_heads * hd
    qk_norms = {None: 0, "head": 2 * hd, "full": q + kv}[qk_norm]
    attn = d * q + 2 * d * kv + q * d + (q + 2 * kv if bias else 0) + qk_norms + (d if out_bias else 0)
    norm = 2 * d if norm_bias else d
    ffn = experts[0] * (mlp * d * i + d) if experts else mlp * d * i  # each expert, and its router row
    block = attn + ffn + (i + d if out_bias else 0) + block_norms * norm
    positions = getattr(config, "n_positions", 0) * d  # GPT-2's learned position embeddings
    return v * d * (1 if tied else 2) + positions + layers * block + norm + (v if head_bias else 0)


def fresh_env() -> dict[str, str]:
    """Environment for a subprocess that must not see this checkout on sys.path."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env
