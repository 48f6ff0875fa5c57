"""COMPACT end to end: :func:`~hf_projcomp.compact.compact_select` then
:func:`~hf_projcomp.compact.compact_build`."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .build import compact_build
from .config import CompactConfig
from .select import CompactSelection, compact_select


class CompactResult(NamedTuple):
    """What :func:`compact_prune` returns: ``small, small_tok, selection = compact_prune(...)``."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    selection: CompactSelection


def compact_prune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    calibration_data: Any,
    config: CompactConfig | None = None,
    *,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> CompactResult:
    """Prune ``model`` (and its tokenizer) without training: select, then build.

    Args:
        model: a supported causal LM (see ``hf_projcomp.ARCHITECTURES``).
        tokenizer: its fast tokenizer; BPE with byte fallback or byte-level BPE for vocabulary pruning.
        calibration_data: see :func:`~hf_projcomp.compact.compact_select`.
        config: a :class:`~hf_projcomp.compact.CompactConfig` (default: its defaults, 50% of the
            parameters).
        dtype: dtype of the pruned model (default: the base model's).
        progress: show progress bars.
        **kwargs: fields of ``CompactConfig`` overriding ``config``'s (``target_params=0.4``).

    Returns:
        A :class:`CompactResult`: a vanilla model of the base class, a standard tokenizer and the
        :class:`~hf_projcomp.compact.CompactSelection` they were built from.
    """
    selection = compact_select(model, tokenizer, calibration_data, config, progress=progress, **kwargs)
    return CompactResult(compact_build(model, selection, dtype=dtype), selection.tokenizer, selection)


__all__ = ["CompactResult", "compact_prune"]
