"""Target sizes, the smaller vanilla config, and hard pruning by index selection.

``hard_prune`` is the step-0 reference of projected compression (one-hot P, A = 0) built by plain
index gathers, and a compressor of its own (the "hard-prune + retrain" baseline).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from accelerate import init_empty_weights
from transformers import PretrainedConfig, PreTrainedModel

from .architectures import get_arch_spec, head_dim
from .plan import CompressionPlan, Selection, WeightPlan, build_plan


def make_target_config(
    config: PretrainedConfig,
    hidden_size: int,
    intermediate_size: int,
    kept_token_ids: torch.Tensor | None = None,
    vocab_size: int | None = None,
) -> PretrainedConfig:
    """A copy of ``config`` with the smaller widths; ``head_dim`` written where the config derived it.

    With ``kept_token_ids`` (new id -> old id) the vocabulary shrinks and special-token ids are
    remapped; a bare ``vocab_size`` is for counting parameters only.
    """
    data = config.to_dict()
    data.pop("quantization_config", None)  # a GGUF-loaded base must not make the result look quantized
    data.update(hidden_size=hidden_size, intermediate_size=intermediate_size, head_dim=head_dim(config))
    if kept_token_ids is not None:
        vocab_size = len(kept_token_ids)
        data.update(remap_token_ids(data, kept_token_ids))
    if vocab_size is not None:
        # Only sizes matter for counting; special ids beyond the count would fail strict validation.
        data["vocab_size"] = vocab_size
        if kept_token_ids is None:
            data.update({f: None for f in SPECIAL_TOKEN_FIELDS if f in data})
    return type(config).from_dict(data)


def count_target_parameters(
    model: PreTrainedModel, hidden_size: int, intermediate_size: int, vocab_size: int | None = None
) -> int:
    """Total parameters of ``type(model)`` at the given sizes (meta device, no memory)."""
    config = make_target_config(model.config, hidden_size, intermediate_size, vocab_size=vocab_size)
    return count_parameters(type(model), config)[0]


SPECIAL_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "decoder_start_token_id")


def remap_token_ids(values: dict, kept_token_ids: torch.Tensor) -> dict:
    """New ids for the special-token fields of a config / generation-config dict (ints or lists)."""
    new_id = {old: new for new, old in enumerate(kept_token_ids.tolist())}

    def remap(field: str, old: int) -> int:
        if old not in new_id:
            raise ValueError(f"{field} {old} is not among the kept tokens; special tokens must be kept")
        return new_id[old]

    out = {}
    for field in SPECIAL_TOKEN_FIELDS:
        value = values.get(field)
        if isinstance(value, int):
            out[field] = remap(field, value)
        elif isinstance(value, (list, tuple)):
            out[field] = [remap(field, v) for v in value]
    return out


def count_parameters(model_class: type[PreTrainedModel], config: PretrainedConfig) -> tuple[int, int]:
    """(total, embedding) parameter counts of ``model_class(config)``, built on the meta device."""
    with init_empty_weights(include_buffers=False):
        model = model_class(config)
    model.tie_weights()  # accelerate's empty init unties them
    total = sum(p.numel() for p in model.parameters())  # tied tensors are yielded once
    embedding = sum(p.numel() for p in {id(p): p for p in (model.get_input_embeddings().weight,
                                                           model.get_output_embeddings().weight)}.values())
    return total, embedding


def validate_target_sizes(
    config: PretrainedConfig, hidden_size: int, intermediate_size: int, vocab_size: int | None = None
) -> None:
    heads = config.num_attention_heads
    if not 0 < hidden_size <= config.hidden_size:
        raise ValueError(f"hidden_size must be in [1, {config.hidden_size}] (the base's), got {hidden_size}")
    if not 0 < intermediate_size <= config.intermediate_size:
        raise ValueError(
            f"intermediate_size must be in [1, {config.intermediate_size}] (the base's), got {intermediate_size}"
        )
    vocab_size = config.vocab_size if vocab_size is None else vocab_size
    if (hidden_size, intermediate_size, vocab_size) == (config.hidden_size, config.intermediate_size, config.vocab_size):
        raise ValueError("the target equals the base model's size: shrink hidden_size, intermediate_size or the vocabulary")
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
        sizes = (hidden_size or config.hidden_size, intermediate_size or config.intermediate_size)
    else:
        sizes = _sizes_for_budget(type(model), config, target_params)
    validate_target_sizes(config, *sizes)
    return sizes


def _sizes_for_budget(
    model_class: type[PreTrainedModel], config: PretrainedConfig, target_params: float | int
) -> tuple[int, int]:
    total, embedding = count_parameters(model_class, config)
    base = total - embedding
    goal = target_params * base if isinstance(target_params, float) else target_params
    if goal >= base:
        raise ValueError(f"target_params ({target_params}) must be below the base's {base:,} non-embedding parameters")
    # Hidden stays a multiple of the head count (and of 8 where possible, for fast kernels).
    step_h = math.lcm(config.num_attention_heads, 8)
    if step_h > config.hidden_size // 2:
        step_h = config.num_attention_heads

    def sizes(ratio: float) -> tuple[int, int]:
        hidden = max(step_h, round(config.hidden_size * ratio / step_h) * step_h)
        inter = max(8, round(config.intermediate_size * ratio / 8) * 8)
        return min(hidden, config.hidden_size), min(inter, config.intermediate_size)

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


def select(tensor: torch.Tensor, entry: WeightPlan, selection: Selection) -> torch.Tensor:
    """Gather the kept rows/columns of one planned weight (times its fixed scale)."""
    out_idx, in_idx = selection.index(entry.out_dim, entry.layer), selection.index(entry.in_dim, entry.layer)
    if out_idx is not None:
        chunks = tensor.reshape(entry.out_chunks, -1, tensor.shape[-1])
        tensor = chunks.index_select(1, out_idx.to(tensor.device)).reshape(-1, tensor.shape[-1])
    if in_idx is not None:
        tensor = tensor.index_select(1, in_idx.to(tensor.device))
    return tensor * entry.scale if entry.scale != 1.0 else tensor


def gathered_norm(weight: torch.Tensor, hidden: torch.Tensor, offset: float, divide_by: float) -> torch.Tensor:
    """A d_model norm weight at the kept indices, with ``divide_by`` folded into its effective scale."""
    kept = weight.index_select(0, hidden.to(weight.device))
    return kept if divide_by == 1.0 else (kept + offset) / divide_by - offset


def build_target_model(
    model: PreTrainedModel, selection: Selection, tensors: dict[str, torch.Tensor]
) -> PreTrainedModel:
    """A vanilla model of ``type(model)`` for ``selection``; ``tensors`` overrides, the rest is copied.

    Tensors not given keep the base's values (they don't shrink); every parameter must end up with the
    target shape, which ``load_state_dict`` checks.
    """
    target_config = make_target_config(
        model.config, selection.hidden_size, selection.intermediate_size, selection.vocab
    )
    with init_empty_weights(include_buffers=False):
        small = type(model)(target_config)
    small.tie_weights()  # accelerate's empty init re-registers parameters, which unties them
    base_state = model.state_dict()
    canonical: dict[int, str] = {}  # a tied parameter takes the value given under its first name
    state = {}
    for name, param in small.state_dict(keep_vars=True).items():
        first = canonical.setdefault(id(param), name)
        source = tensors.get(first, base_state[name]) if first == name else state[first]
        state[name] = source if first != name else source.detach().to(dtype=param.dtype, copy=True)
    small.load_state_dict(state, strict=True, assign=True)
    small.tie_weights()
    small.generation_config = copy.deepcopy(model.generation_config)
    if selection.vocab is not None:
        for field, value in remap_token_ids(model.generation_config.to_dict(), selection.vocab).items():
            setattr(small.generation_config, field, value)
    small.eval()
    return small


def hard_prune(
    model: PreTrainedModel,
    hidden_indices: Sequence[int] | torch.Tensor,
    intermediate_indices: Sequence[Sequence[int]],
    kept_token_ids: Sequence[int] | torch.Tensor | None = None,
) -> PreTrainedModel:
    """A smaller vanilla model keeping the given d_model indices (global), d_ff indices (per layer)
    and, optionally, token ids (``kept_token_ids[new_id] = old_id``)."""
    spec = get_arch_spec(model.config)
    selection = Selection.from_lists(hidden_indices, intermediate_indices, kept_token_ids)
    vocab_size = None if selection.vocab is None else len(selection.vocab)
    validate_target_sizes(model.config, selection.hidden_size, selection.intermediate_size, vocab_size)
    plan = build_plan(model, spec, selection.hidden_size)
    return build_target_model(model, selection, pruned_tensors(model, plan, selection))


def pruned_tensors(model: PreTrainedModel, plan: CompressionPlan, selection: Selection) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters(remove_duplicate=False))
    tensors = {e.name: select(params[e.name], e, selection) for e in plan.weights}
    for norm in plan.norms:
        tensors[norm.name] = gathered_norm(params[norm.name], selection.hidden, plan.norm_offset, norm.divide_by)
    return tensors
