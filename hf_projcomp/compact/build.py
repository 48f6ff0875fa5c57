"""Build COMPACT's pruned model from a selection: index gathers, then the refitted down_proj values."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ..architectures import get_arch_spec
from ..hard_pruning import hard_prune
from .select import CompactSelection


@torch.no_grad()
def compact_build(
    model: PreTrainedModel, selection: CompactSelection, *, dtype: torch.dtype | None = None
) -> PreTrainedModel:
    """The vanilla model of ``model``'s class that ``selection`` describes, in ``dtype`` (default: the
    base's); pair it with ``selection.tokenizer``."""
    if not isinstance(selection, CompactSelection):
        raise TypeError(f"selection must be a CompactSelection (from compact_select), got {type(selection).__name__}")
    small = hard_prune(model, list(range(model.config.hidden_size)), selection.intermediate_indices,
                       selection.kept_token_ids, dtype=dtype)
    if selection.down_proj is not None:
        spec = get_arch_spec(model.config)
        layers = small.get_submodule(spec.layers)
        if len(selection.down_proj) != len(layers):
            raise ValueError(f"selection.down_proj has {len(selection.down_proj)} layers, the model {len(layers)}")
        for i, (layer, weight) in enumerate(zip(layers, selection.down_proj)):
            target = layer.get_submodule(spec.ffn_down).weight
            if target.shape != weight.shape:
                raise ValueError(f"selection.down_proj[{i}] is {tuple(weight.shape)}, the pruned layer's "
                                 f"{tuple(target.shape)}: it belongs to other d_ff channels")
            target.copy_(weight)
    return small


__all__ = ["compact_build"]
