"""Recovery after hard pruning, by its former path: :func:`distill_pruned`, :class:`DistillConfig` and
:class:`DistillationTrainer` live in :mod:`hf_projcomp.training.distill` (import them from
``hf_projcomp`` or ``hf_projcomp.training``); this module re-exports them."""

from __future__ import annotations

import warnings
from typing import Any

from datasets import Dataset

from .distill import SCHEDULERS, DistillationTrainer, DistillConfig, _block_dataset, distill_pruned


def training_blocks(
    tokenizer: Any,
    data: Any,
    block_size: int,
    max_tokens: int | None = None,
    bos_each_block: bool = False,
    progress: bool = True,
    *,
    name: str = "data",
) -> Dataset:
    """Deprecated (removed in the next release): use :func:`hf_projcomp.blocks.text_blocks`, which
    returns the blocks as lists (``Dataset.from_dict({"input_ids": blocks, "labels": blocks})``)."""
    warnings.warn(
        "hf_projcomp.training.recovery.training_blocks is deprecated and will be removed in the next release: "
        "use hf_projcomp.blocks.text_blocks",
        DeprecationWarning,
        stacklevel=2,
    )
    return _block_dataset(tokenizer, data, block_size, max_tokens, bos_each_block, progress, name)


__all__ = ["SCHEDULERS", "DistillConfig", "DistillationTrainer", "distill_pruned", "training_blocks"]
