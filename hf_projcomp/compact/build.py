"""Build COMPACT's pruned model from a selection: index gathers, then the refitted down_proj values."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ..architectures import get_arch_spec
from ..hard_pruning import hard_prune
from .compensation import load_down_proj
from .select import CompactSelection


@torch.no_grad()
def compact_build(
    model: PreTrainedModel, selection: CompactSelection, *, dtype: torch.dtype | None = None
) -> PreTrainedModel:
    """The vanilla model of ``model``'s class that ``selection`` describes, in ``dtype`` (default: the
    base's); pair it with ``selection.tokenizer``."""
    if not isinstance(selection, CompactSelection):
        raise TypeError(f"selection must be a CompactSelection (from compact_select), got {type(selection).__name__}")
    small = hard_prune(
        model,
        list(range(model.config.hidden_size)),
        selection.intermediate_indices,
        selection.kept_token_ids,
        dtype=dtype,
    )
    if selection.down_proj is not None:
        try:
            load_down_proj(small, get_arch_spec(model.config), selection.down_proj)
        except ValueError as err:
            raise ValueError(f"selection.{err}") from None
    return small


__all__ = ["compact_build"]
