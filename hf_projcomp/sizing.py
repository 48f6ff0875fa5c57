"""Parameter counts and target sizes: how big a model of the base class is at given widths.

Counts are exact: the model is built on the meta device from the target config (no memory), so every
family's own layout (tied heads, biases, norms) is counted as transformers builds it.
"""

from __future__ import annotations

import math

import torch
from accelerate import init_empty_weights
from transformers import PretrainedConfig, PreTrainedModel

from .architectures import ffn_size, get_arch_spec
from .target import make_target_config


def count_parameters(model_class: type[PreTrainedModel], config: PretrainedConfig) -> tuple[int, int]:
    """(total, embedding) parameter counts of ``model_class(config)``, built on the meta device."""
    with init_empty_weights(include_buffers=False):
        model = model_class(config)
    model.tie_weights()  # accelerate's empty init unties them
    total = sum(p.numel() for p in model.parameters())  # tied tensors are yielded once
    tables = (_weight(model.get_input_embeddings()), _weight(model.get_output_embeddings()))
    embedding = sum(p.numel() for p in {id(p): p for p in tables}.values())
    return total, embedding


def _weight(module: torch.nn.Module) -> torch.Tensor:
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.weight is not a tensor")
    return weight


def count_target_parameters(
    model: PreTrainedModel, hidden_size: int, intermediate_size: int, vocab_size: int | None = None
) -> int:
    """Total parameters of ``type(model)`` at the given sizes (meta device, no memory)."""
    config = make_target_config(model.config, hidden_size, intermediate_size, vocab_size=vocab_size)
    return count_parameters(type(model), config)[0]


def validate_target_sizes(
    config: PretrainedConfig, hidden_size: int, intermediate_size: int, vocab_size: int | None = None
) -> None:
    """``ValueError`` naming the parameter when a target width is out of range or not a valid config."""
    heads = config.num_attention_heads
    spec = get_arch_spec(config)
    fixed = spec.fixed_hidden(config)
    if fixed and hidden_size != config.hidden_size:
        raise ValueError(
            f"hidden_size must stay {config.hidden_size} for model_type {config.model_type!r} ({fixed}); "
            f"shrink intermediate_size or the vocabulary instead, got hidden_size={hidden_size}"
        )
    if not 0 < hidden_size <= config.hidden_size:
        raise ValueError(f"hidden_size must be in [1, {config.hidden_size}] (the base's), got {hidden_size}")
    base_ffn = ffn_size(config)
    if not 0 < intermediate_size <= base_ffn:
        raise ValueError(f"intermediate_size must be in [1, {base_ffn}] (the base's), got {intermediate_size}")
    vocab_size = config.vocab_size if vocab_size is None else vocab_size
    if (hidden_size, intermediate_size, vocab_size) == (config.hidden_size, base_ffn, config.vocab_size):
        raise ValueError(
            "the target equals the base model's size: shrink hidden_size, intermediate_size or the vocabulary"
        )
    for name, value in (("hidden_size", hidden_size), ("intermediate_size", intermediate_size)):
        if value % spec.width_multiple:
            raise ValueError(
                f"{name} ({value}) must be a multiple of {spec.width_multiple} for model_type {config.model_type!r} "
                f"(transformers' grouped_mm experts kernel needs 16-byte-aligned rows)"
            )
    if hidden_size % heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({heads}); "
            f"transformers rejects other configs"
        )


def resolve_target_sizes(
    model: PreTrainedModel,
    hidden_size: int | None,
    intermediate_size: int | None,
    target_params: float | int | None,
) -> tuple[int, int]:
    """Turn explicit widths or a non-embedding parameter target into validated (hidden, intermediate)."""
    config = model.config
    if target_params is None:
        sizes = (hidden_size or config.hidden_size, intermediate_size or ffn_size(config))
    else:
        sizes = sizes_for_budget(type(model), config, target_params)
    validate_target_sizes(config, *sizes)
    return sizes


def sizes_for_budget(
    model_class: type[PreTrainedModel], config: PretrainedConfig, target_params: float | int
) -> tuple[int, int]:
    """(hidden, intermediate), shrunk by one common ratio, whose non-embedding parameter count is
    closest to ``target_params`` (a fraction of the base's non-embedding parameters, or a count)."""
    total, embedding = count_parameters(model_class, config)
    base = total - embedding
    goal = target_params * base if isinstance(target_params, float) else target_params
    if goal >= base:
        raise ValueError(f"target_params ({target_params}) must be below the base's {base:,} non-embedding parameters")
    # Hidden stays a multiple of the head count (and of 8 where possible, for fast kernels).
    step_h = math.lcm(config.num_attention_heads, 8)
    if step_h > config.hidden_size // 2:
        step_h = config.num_attention_heads

    hidden_fixed = get_arch_spec(config).fixed_hidden(config) is not None  # then only d_ff shrinks
    base_ffn = ffn_size(config)

    def sizes(ratio: float) -> tuple[int, int]:
        hidden = max(step_h, round(config.hidden_size * ratio / step_h) * step_h)
        if hidden_fixed:
            hidden = config.hidden_size
        inter = max(8, round(base_ffn * ratio / 8) * 8)
        return min(hidden, config.hidden_size), min(inter, base_ffn)

    def non_embedding(ratio: float) -> int:
        t, e = count_parameters(model_class, make_target_config(config, *sizes(ratio)))
        return t - e

    lo, hi = 0.0, 1.0  # non-embedding parameters grow monotonically with the common ratio
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if non_embedding(mid) <= goal else (lo, mid)
    best = min((lo, hi), key=lambda r: abs(non_embedding(r) - goal))
    if non_embedding(best) <= 0 or sizes(best)[0] < config.num_attention_heads:
        raise ValueError(f"target_params ({target_params}) is too small for this model")
    return sizes(best)


__all__ = [
    "count_parameters",
    "count_target_parameters",
    "resolve_target_sizes",
    "sizes_for_budget",
    "validate_target_sizes",
]
