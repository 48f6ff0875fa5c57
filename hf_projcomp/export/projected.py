"""A projected-compression model out as a vanilla one: merge every ``W_c`` once, summarise it for the
model card, save it verified (what ``ProjCompModel.merge_and_unload`` and ``save_merged`` do)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel

from ..config import ProjCompConfig
from ..target import instantiate
from .card import CompressionSummary
from .save import save_compressed

if TYPE_CHECKING:
    from ..projection.model import ProjCompModel

# The configuration a model card reports: targets and importance, not the indices.
CARD_SETTINGS = (
    "importance",
    "target_params",
    "hidden_size",
    "intermediate_size",
    "vocab_size",
    "base_dtype",
    "projection_rank",
)


@torch.no_grad()
def merge_projected(pc: ProjCompModel, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A new vanilla model of the base class with the compressed config, holding every ``W_c`` computed
    once and the compressed network's own tensors, in ``dtype`` (default: ``pc.output_dtype``)."""
    small = pc.compressed
    state = {**small.state_dict(), **pc.projected_weights()}
    device = next(small.parameters()).device
    merged = instantiate(type(small), copy.deepcopy(small.config), state, dtype or pc.output_dtype, device)
    merged.generation_config = copy.deepcopy(small.generation_config)
    merged.name_or_path = small.name_or_path
    return merged.requires_grad_(True)


def card_settings(config: ProjCompConfig) -> dict[str, Any]:
    """The adapter settings a model card reports (those set)."""
    return {n: getattr(config, n) for n in CARD_SETTINGS if getattr(config, n) is not None}


def projected_summary(pc: ProjCompModel, merged: PreTrainedModel, **fields: Any) -> CompressionSummary:
    """What the model card of ``merged`` reports: base, sizes, settings and the training data and tokens
    the adapter recorded; ``fields`` add to or override those."""
    config = pc.projcomp_config
    recorded = {
        "base_model": config.base_model_name_or_path,
        "settings": card_settings(config),
        "training_data": config.training_data,
        "training_tokens": config.training_tokens,
    }
    return CompressionSummary.from_configs(
        "projected-compression",
        pc.model.config,
        merged.config,
        pc.model.num_parameters(),
        merged.num_parameters(),
        **{**recorded, **fields},
    )


def save_projected(
    pc: ProjCompModel,
    out_dir: str | os.PathLike,
    tokenizer: Any = None,
    summary: CompressionSummary | None = None,
    **kwargs: Any,
) -> Path:
    """Merge, then :func:`~hf_projcomp.export.save_compressed` with the adapter's pruned tokenizer when the
    vocabulary shrank (else ``tokenizer``, the base's) and the model card of :func:`projected_summary`."""
    tokenizer = pc.tokenizer if pc.tokenizer is not None else tokenizer
    if tokenizer is None:
        raise ValueError("save_merged needs the base model's tokenizer: pass tokenizer=...")
    merged = merge_projected(pc)
    return save_compressed(merged, tokenizer, out_dir, summary or projected_summary(pc, merged), **kwargs)


__all__ = ["CARD_SETTINGS", "card_settings", "merge_projected", "projected_summary", "save_projected"]
