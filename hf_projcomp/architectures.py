"""One table entry per supported model family: everything architecture-specific lives here.

The algorithms (importance, projection, pruning, merge) read these entries and never branch on
``model_type``. A linear layer is described by which of its sides touch the residual stream
(``HIDDEN``) or the FFN intermediate (``FFN``); a side marked ``None`` keeps its width (heads and
head_dim never shrink).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn
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
    # ``path`` names a parameter holding every expert's weight (experts × out × in), not a module.
    experts: bool = False
    # The weight is stored in × out (GPT-2's ``Conv1D``), not torch's out × in.
    transposed: bool = False


@dataclass(frozen=True)
class GGUFSpec:
    """How llama.cpp names and lays out a family (what its ``convert_hf_to_gguf.py`` does for it).

    ``rope_permute``: linears whose output rows llama.cpp wants interleaved for its "normal" rotary
    (HF keeps rotate-half order), with the config field giving their head count. ``sliding_window``:
    the family's llama.cpp graph reads ``attention.sliding_window`` and the per-layer pattern.
    ``requires``: (config field, field it must equal, why) for facts llama.cpp hard-codes.
    ``square_attention``: llama.cpp's graph for ``arch`` sizes q/o as hidden × hidden, so a model whose
    hidden_size shrank below heads × head_dim is written as ``fallback`` instead (the same network in
    llama.cpp's general llama graph). ``splits``: fused linears written as separate ones, each part
    (new path, rows) sized by "q" (heads × head_dim), "kv" (kv heads × head_dim) or "half" (an expert
    parameter splits along its output rows too). ``no_fallback``: why no general llama.cpp graph runs a
    ``square_attention`` family without a ``fallback`` once its hidden_size shrank (it is then refused).
    """

    arch: str  # gguf.MODEL_ARCH member name
    rope_permute: tuple[tuple[str, str], ...] = ()
    sliding_window: bool = False
    requires: tuple[tuple[str, str, str], ...] = ()
    square_attention: bool = False
    fallback: GGUFSpec | None = None
    # GGUF key (after "<arch>.") <- float config field, written when the config has it.
    constants: tuple[tuple[str, str], ...] = ()
    # llama.cpp skips RoPE in every n-th layer (SmolLM3: 4) and reads no per-layer list.
    no_rope_every: int | None = None
    splits: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    no_fallback: str = ""
    # GGUF key (after "<arch>.") and config field of the norm epsilon.
    norm_eps: tuple[str, str] = ("attention.layer_norm_rms_epsilon", "rms_norm_eps")
    # GGUF key (after "<arch>.") <- integer / boolean config field, written when the config has it.
    integers: tuple[tuple[str, str], ...] = ()
    flags: tuple[tuple[str, str], ...] = ()
    # (config field, value llama.cpp's graph hard-codes, why): a config without the field passes.
    assumes: tuple[tuple[str, object, str], ...] = ()
    # False: learned positions (GPT-2), no RoPE keys.
    rotary: bool = True
    # Fused q/k/v whose rows go head by head ([q_h; k_h; v_h], GPT-NeoX): llama.cpp wants [q; k; v].
    per_head_qkv: tuple[str, ...] = ()
    # ModuleLists of per-head norms (StableLM's q/k LayerNorms), written stacked (heads × head_dim) under
    # the list's parent module.
    stacked_norms: tuple[str, ...] = ()
    # The graph requires ``output.weight``: a tied LM head is written as a copy of the embedding.
    output_required: bool = False


_ROPE_PERMUTE = (("self_attn.q_proj", "num_attention_heads"), ("self_attn.k_proj", "num_key_value_heads"))
_LLAMA_GGUF = GGUFSpec("LLAMA", rope_permute=_ROPE_PERMUTE)
_PHI3_AS_LLAMA = GGUFSpec(
    "LLAMA",
    rope_permute=_ROPE_PERMUTE,
    splits=(
        ("self_attn.qkv_proj", (("self_attn.q_proj", "q"), ("self_attn.k_proj", "kv"), ("self_attn.v_proj", "kv"))),
        ("mlp.gate_up_proj", (("mlp.gate_proj", "half"), ("mlp.up_proj", "half"))),
    ),
)
# transformers' fused experts ([gate; up] per expert) as llama.cpp's ffn_gate_exps / ffn_up_exps.
_EXPERT_SPLIT = (("mlp.experts.gate_up_proj", (("mlp.experts.gate_proj", "half"), ("mlp.experts.up_proj", "half"))),)
_LAYER_NORM_EPS = "attention.layer_norm_epsilon"
# llama.cpp's general graphs (llama, qwen3, ...) size q/o by heads × head_dim but all use RMSNorm and a gated
# SiLU MLP; every graph with biased LayerNorms and an ungated GELU MLP sizes q/o as n_embd × n_embd.
_NO_LAYERNORM_FALLBACK = (
    "every llama.cpp graph with biased LayerNorms and an ungated GELU MLP sizes q/o as n_embd × n_embd "
    "(the general llama graph has RMSNorm, a gated SiLU MLP and no partial rotary)"
)


def _expert_keys(count_field: str) -> tuple[tuple[str, str], ...]:
    return (("expert_count", count_field), ("expert_used_count", "num_experts_per_tok"))


@dataclass(frozen=True)
class ArchSpec:
    """Facts about one ``model_type``, enough to project, prune and merge it."""

    model_type: str
    linears: tuple[LinearSpec, ...]
    # Norms over d_model inside each block (gathered at the kept hidden indices); one the config
    # leaves out (StableLM's parallel residual has no post_attention_layernorm) is skipped.
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
    # Why d_model cannot shrink, when it can't: the family's attention derives head_dim from
    # hidden_size // num_heads, so a smaller hidden_size with the heads kept is no config of the class.
    # Only d_ff and the vocabulary shrink.
    hidden_fixed: str | None = None
    # (config field, dotted into dicts; value; why): configs of the family whose d_model can't shrink.
    hidden_fixed_if: tuple[tuple[str, object, str], ...] = ()
    # Config field holding d_ff (the per-expert width in a mixture of experts); when it is None the
    # family's default is ``ffn_size_from_hidden`` × hidden_size (GPT-2's n_inner).
    ffn_size: str = "intermediate_size"
    ffn_size_from_hidden: int | None = None
    # Mixture of experts: the module holding the experts (transformers' fused layout: ``gate_up_proj``
    # experts × 2·d_ff × d_model, [gate; up], ``act_fn``, called with the routed top-k indices and
    # weights) and the config field counting them. Every expert keeps its own d_ff channels, the same
    # number in each, so the config stays vanilla.
    experts: str | None = None
    num_experts: str | None = None
    # Widths (d_model, d_ff) must be multiples of this: transformers' grouped_mm experts kernel wants
    # 16-byte-aligned strides, 8 elements in bfloat16.
    width_multiple: int = 1
    # (config field, value it must have, why): layouts the table entry does not describe.
    requires: tuple[tuple[str, object, str], ...] = ()
    gguf: GGUFSpec | None = None

    def embedding_scale(self, hidden_size: int) -> float:
        return math.sqrt(hidden_size) if self.scaled_embedding else 1.0

    def fixed_hidden(self, config: PretrainedConfig) -> str | None:
        """Why ``config``'s d_model must keep its width (None: it may shrink)."""
        if self.hidden_fixed:
            return self.hidden_fixed
        for path, value, why in self.hidden_fixed_if:
            found: object = config
            for part in path.split("."):
                found = found.get(part) if isinstance(found, dict) else getattr(found, part, None)
            if found == value:
                return why
        return None

    def ffn_groups(self, config: PretrainedConfig) -> tuple[int, ...]:
        """Leading shape of one layer's d_ff selection: () for one MLP, (experts,) for a mixture."""
        return (int(getattr(config, self.num_experts)),) if self.num_experts else ()


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
_HEAD_DIM_FROM_HIDDEN = "its attention derives head_dim as hidden_size // num_attention_heads"
# Fused experts (transformers 5): the router is a d_model-input linear over experts.
_MOE_LINEARS = (
    *_LLAMA_LINEARS[:4],
    LinearSpec("mlp.gate", None, HIDDEN),
    LinearSpec("mlp.experts.gate_up_proj", FFN, HIDDEN, out_chunks=2, experts=True),
    LinearSpec("mlp.experts.down_proj", HIDDEN, FFN, experts=True),
)

ARCHITECTURES: dict[str, ArchSpec] = {
    spec.model_type: spec
    for spec in (
        ArchSpec("llama", _LLAMA_LINEARS, _LLAMA_NORMS, gguf=_LLAMA_GGUF),
        ArchSpec("mistral", _LLAMA_LINEARS, _LLAMA_NORMS, gguf=_LLAMA_GGUF),  # llama.cpp runs it as llama
        # q/k/v biases sit on the head side, which never shrinks: they are carried over unchanged.
        ArchSpec(
            "qwen2", _LLAMA_LINEARS, _LLAMA_NORMS, gguf=GGUFSpec("QWEN2", square_attention=True, fallback=_LLAMA_GGUF)
        ),
        # q_norm/k_norm act on head_dim, which never shrinks: carried over whole (and trainable).
        ArchSpec("qwen3", _LLAMA_LINEARS, _LLAMA_NORMS, gguf=GGUFSpec("QWEN3")),
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
            gguf=GGUFSpec(
                "GEMMA3",
                sliding_window=True,
                requires=(
                    ("query_pre_attn_scalar", "head_dim", "llama.cpp's gemma3 scales attention by 1/sqrt(head_dim)"),
                ),
            ),
        ),
        # Embedding, residual and attention multipliers and logits scaling are constants of the config.
        ArchSpec(
            "granite",
            _LLAMA_LINEARS,
            _LLAMA_NORMS,
            gguf=GGUFSpec(
                "GRANITE",
                rope_permute=_ROPE_PERMUTE,
                constants=(
                    ("attention.scale", "attention_multiplier"),
                    ("embedding_scale", "embedding_multiplier"),
                    ("residual_scale", "residual_multiplier"),
                    ("logit_scale", "logits_scaling"),
                ),
            ),
        ),
        # Layers without RoPE (no_rope_layers) differ in computation only, not in weights.
        ArchSpec(
            "smollm3",
            _LLAMA_LINEARS,
            _LLAMA_NORMS,
            gguf=GGUFSpec("SMOLLM3", rope_permute=_ROPE_PERMUTE, no_rope_every=4),
        ),
        # Norms after attention and MLP instead of before; q_norm/k_norm span all heads (head side, kept).
        # llama.cpp's olmo2 sizes q/o and q_norm by n_embd: written only while hidden_size = heads × head_dim.
        ArchSpec(
            "olmo2",
            _LLAMA_LINEARS,
            ("post_attention_layernorm", "post_feedforward_layernorm"),
            gguf=GGUFSpec(
                "OLMO2",
                square_attention=True,
                output_required=True,
                no_fallback=(
                    "the one llama.cpp graph with q_norm over all heads and q sized heads × head_dim (minimax-m2) "
                    "is a pre-norm mixture of experts, not OLMo-2's post-norm dense block"
                ),
            ),
        ),
        # Gemma-3's layout without q/k norms; attention and final logit softcapping are constants.
        ArchSpec(
            "gemma2",
            _LLAMA_LINEARS,
            ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
            norm_offset=1.0,
            scaled_embedding=True,
            gguf=GGUFSpec(
                "GEMMA2",
                sliding_window=True,
                requires=(
                    ("query_pre_attn_scalar", "head_dim", "llama.cpp's gemma2 scales attention by 1/sqrt(head_dim)"),
                ),
                constants=(("attn_logit_softcapping", "attn_logit_softcapping"),),
            ),
        ),
        # Biases everywhere: o_proj's and c_proj's are on the hidden side, c_fc's on the d_ff side, all
        # projected with their rows; a plain (ungated) GELU MLP.
        ArchSpec(
            "starcoder2",
            (
                LinearSpec("self_attn.q_proj", None, HIDDEN),
                LinearSpec("self_attn.k_proj", None, HIDDEN),
                LinearSpec("self_attn.v_proj", None, HIDDEN),
                LinearSpec("self_attn.o_proj", HIDDEN, None),
                LinearSpec("mlp.c_fc", FFN, HIDDEN),
                LinearSpec("mlp.c_proj", HIDDEN, FFN),
            ),
            _LLAMA_NORMS,
            ffn_down="mlp.c_proj",
            gguf=GGUFSpec(
                "STARCODER2",
                square_attention=True,
                no_fallback=_NO_LAYERNORM_FALLBACK,
                norm_eps=(_LAYER_NORM_EPS, "norm_epsilon"),
                assumes=(("use_bias", True, "llama.cpp's starcoder2 requires the o/MLP bias tensors"),),
            ),
        ),
        # Phi-2: a parallel block (attention and MLP both read the one LayerNorm), biases everywhere
        # (the LM head's too, gathered with the kept vocabulary), partial rotary on the head side.
        ArchSpec(
            "phi",
            (
                LinearSpec("self_attn.q_proj", None, HIDDEN),
                LinearSpec("self_attn.k_proj", None, HIDDEN),
                LinearSpec("self_attn.v_proj", None, HIDDEN),
                LinearSpec("self_attn.dense", HIDDEN, None),
                LinearSpec("mlp.fc1", FFN, HIDDEN),
                LinearSpec("mlp.fc2", HIDDEN, FFN),
            ),
            ("input_layernorm",),
            ffn_down="mlp.fc2",
            final_norm="model.final_layernorm",
            hidden_fixed_if=(
                ("qk_layernorm", True, "its q/k LayerNorms are sized by hidden_size // num_attention_heads"),
            ),
            gguf=GGUFSpec(
                "PHI2",
                square_attention=True,
                no_fallback=_NO_LAYERNORM_FALLBACK,
                norm_eps=(_LAYER_NORM_EPS, "layer_norm_eps"),
                output_required=True,
                assumes=(("qk_layernorm", False, "llama.cpp's phi2 has no q/k LayerNorms"),),
            ),
        ),
        # GPT-NeoX (Pythia): fused q/k/v over hidden_size, parallel residual, LayerNorms with biases,
        # partial rotary, untied head. Its attention is sized by hidden_size itself.
        ArchSpec(
            "gpt_neox",
            (
                LinearSpec("attention.query_key_value", None, HIDDEN),
                LinearSpec("attention.dense", HIDDEN, None),
                LinearSpec("mlp.dense_h_to_4h", FFN, HIDDEN),
                LinearSpec("mlp.dense_4h_to_h", HIDDEN, FFN),
            ),
            _LLAMA_NORMS,
            ffn_down="mlp.dense_4h_to_h",
            embed="gpt_neox.embed_in",
            final_norm="gpt_neox.final_layer_norm",
            layers="gpt_neox.layers",
            hidden_fixed=_HEAD_DIM_FROM_HIDDEN,
            gguf=GGUFSpec(
                "GPTNEOX",
                square_attention=True,
                norm_eps=(_LAYER_NORM_EPS, "layer_norm_eps"),
                flags=(("use_parallel_residual", "use_parallel_residual"),),
                per_head_qkv=("attention.query_key_value",),
                output_required=True,
                assumes=(("attention_bias", True, "llama.cpp's gptneox requires the attention biases"),),
            ),
        ),
        # GPT-2: Conv1D weights (in × out), biases everywhere, learned position embeddings on the d_model
        # side (kept with d_model, which can't shrink), fused q/k/v, a tied head.
        ArchSpec(
            "gpt2",
            (
                LinearSpec("attn.c_attn", None, HIDDEN, transposed=True),
                LinearSpec("attn.c_proj", HIDDEN, None, transposed=True),
                LinearSpec("mlp.c_fc", FFN, HIDDEN, transposed=True),
                LinearSpec("mlp.c_proj", HIDDEN, FFN, transposed=True),
            ),
            ("ln_1", "ln_2"),
            ffn_down="mlp.c_proj",
            embed="transformer.wte",
            final_norm="transformer.ln_f",
            layers="transformer.h",
            hidden_fixed=_HEAD_DIM_FROM_HIDDEN,
            ffn_size="n_inner",
            ffn_size_from_hidden=4,
            # The converter's transpose of Conv1D weights comes from ``transposed`` above.
            gguf=GGUFSpec(
                "GPT2",
                square_attention=True,
                rotary=False,
                norm_eps=(_LAYER_NORM_EPS, "layer_norm_epsilon"),
                assumes=(
                    ("scale_attn_weights", True, "llama.cpp's gpt2 scales attention by 1/sqrt(head_dim)"),
                    ("scale_attn_by_inverse_layer_idx", False, "llama.cpp's gpt2 scales attention by 1/sqrt(head_dim)"),
                ),
            ),
        ),
        # StableLM: llama's layout with LayerNorms (biases), optional parallel residual and q/k
        # LayerNorms per head (head side, kept); head_dim derived from hidden_size.
        # (llama.cpp's stablelm runs the parallel residual when ffn_norm is absent, as it then is.)
        ArchSpec(
            "stablelm",
            _LLAMA_LINEARS,
            _LLAMA_NORMS,
            hidden_fixed=_HEAD_DIM_FROM_HIDDEN,
            gguf=GGUFSpec(
                "STABLELM",
                square_attention=True,
                norm_eps=(_LAYER_NORM_EPS, "layer_norm_eps"),
                stacked_norms=("self_attn.q_layernorm.norms", "self_attn.k_layernorm.norms"),
                output_required=True,
            ),
        ),
        # Mixtures of experts: every expert's d_ff shrinks to one width; the router reads the pruned
        # d_model. Qwen3-MoE's q/k norms act on head_dim (head side, kept).
        ArchSpec(
            "mixtral",
            _MOE_LINEARS,
            _LLAMA_NORMS,
            experts="mlp.experts",
            num_experts="num_local_experts",
            width_multiple=8,
            # llama.cpp runs Mixtral as llama with experts (its converter does the same).
            gguf=GGUFSpec(
                "LLAMA",
                rope_permute=_ROPE_PERMUTE,
                splits=_EXPERT_SPLIT,
                integers=_expert_keys("num_local_experts"),
            ),
        ),
        ArchSpec(
            "olmoe",
            _MOE_LINEARS,
            _LLAMA_NORMS,
            experts="mlp.experts",
            num_experts="num_experts",
            width_multiple=8,
            hidden_fixed="its q/k norms are sized from hidden_size, not from the heads they normalise",
            gguf=GGUFSpec(
                "OLMOE",
                square_attention=True,
                splits=_EXPERT_SPLIT,
                integers=_expert_keys("num_experts"),
                output_required=True,
                requires=(
                    (
                        "num_key_value_heads",
                        "num_attention_heads",
                        "llama.cpp's olmoe sizes attn_k_norm as n_embd, the width of all query heads",
                    ),
                ),
                assumes=(
                    ("norm_topk_prob", False, "llama.cpp's olmoe does not renormalise the top-k routing weights"),
                    ("clip_qkv", None, "llama.cpp's olmoe does not clip q/k/v"),
                ),
            ),
        ),
        ArchSpec(
            "qwen3_moe",
            _MOE_LINEARS,
            _LLAMA_NORMS,
            experts="mlp.experts",
            num_experts="num_experts",
            ffn_size="moe_intermediate_size",
            width_multiple=8,
            requires=(
                ("mlp_only_layers", [], "layers with a dense MLP would need a second d_ff"),
                ("decoder_sparse_step", 1, "layers with a dense MLP would need a second d_ff"),
            ),
            gguf=GGUFSpec(
                "QWEN3MOE",
                splits=_EXPERT_SPLIT,
                integers=(*_expert_keys("num_experts"), ("expert_feed_forward_length", "moe_intermediate_size")),
                assumes=(("norm_topk_prob", True, "llama.cpp's qwen3moe renormalises the top-k routing weights"),),
            ),
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
            # llama.cpp's phi3 graph ignores the sliding window too: its fallback is exact as far as the window.
            gguf=GGUFSpec("PHI3", square_attention=True, fallback=_PHI3_AS_LLAMA),
            hidden_fixed_if=(
                (
                    "rope_parameters.rope_type",
                    "longrope",
                    "Phi3Config sizes longrope's factors by hidden_size // num_attention_heads",
                ),
            ),
        ),
    )
}


def get_arch_spec(config: PretrainedConfig) -> ArchSpec:
    """The table entry for ``config.model_type``; ``ValueError`` naming the supported types otherwise."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"model_type {model_type!r} is not supported; supported model types: {', '.join(sorted(ARCHITECTURES))}"
        )
    spec = ARCHITECTURES[model_type]
    for field, value, why in spec.requires:
        if getattr(config, field, value) != value:
            raise ValueError(
                f"model_type {model_type!r} is supported with {field}={value!r} only ({why}); "
                f"this config has {field}={getattr(config, field)!r}"
            )
    return spec


def block_norm_modules(layer: nn.Module, spec: ArchSpec) -> list[tuple[str, nn.Module]]:
    """(name, module) of the d_model norms ``layer`` has, of those the table lists."""
    found = []
    for name in spec.block_norms:
        parent, _, attr = name.rpartition(".")
        module = getattr(layer.get_submodule(parent), attr, None)
        if module is not None:
            found.append((name, module))
    return found


def ffn_size(config: PretrainedConfig) -> int:
    """The base's d_ff (per expert in a mixture of experts), from the family's own config field."""
    spec = get_arch_spec(config)
    value = getattr(config, spec.ffn_size, None)
    if value is not None:
        return int(value)
    if spec.ffn_size_from_hidden:
        return spec.ffn_size_from_hidden * config.hidden_size
    raise ValueError(f"{type(config).__name__} has no {spec.ffn_size}")


def head_dim(config: PretrainedConfig) -> int:
    """Per-head width; Qwen2/Phi3 configs don't store it and derive it from hidden_size."""
    value = getattr(config, "head_dim", None)
    return int(value) if value else config.hidden_size // config.num_attention_heads
