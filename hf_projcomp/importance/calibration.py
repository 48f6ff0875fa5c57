"""Calibration input: token-id batches in the shapes users already have."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

Batch = dict[str, torch.Tensor]


def _as_batch(item: Any) -> Batch:
    if isinstance(item, dict) or hasattr(item, "keys"):
        ids = torch.as_tensor(item["input_ids"], dtype=torch.long)
        mask = item.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask, dtype=torch.long)
    else:
        ids = torch.as_tensor(item, dtype=torch.long)
        mask = torch.ones_like(ids)
    if ids.dim() == 1:
        ids, mask = ids.unsqueeze(0), mask.reshape(1, -1)
    if ids.dim() != 2 or ids.shape != mask.shape or ids.numel() == 0:
        raise ValueError(
            "calibration_data batches must be non-empty token ids of shape (batch, seq) or (seq,), "
            f"with a matching attention_mask; got input_ids of shape {tuple(ids.shape)}"
        )
    return {"input_ids": ids, "attention_mask": mask}


def _dataset_batches(dataset: Any, batch_size: int) -> Iterator[Batch]:
    if "input_ids" not in dataset.column_names:
        raise ValueError(f"calibration_data Dataset needs an 'input_ids' column, has {dataset.column_names}")
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]["input_ids"]
        width = max(len(r) for r in rows)
        # Right padding, masked out of every statistic.
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        yield {"input_ids": ids, "attention_mask": mask}


def calibration_batches(data: Any, batch_size: int = 8) -> list[Batch]:
    """Normalise calibration data to a list of ``{"input_ids", "attention_mask"}`` batches.

    Accepts a ``datasets.Dataset`` with an ``input_ids`` column, a tensor of shape (batch, seq) or
    (seq,), or an iterable of such tensors / lists of ids / dicts with ``input_ids``.
    """
    if data is None:
        raise ValueError("calibration_data is required for data-driven importance")
    if hasattr(data, "column_names"):
        batches = list(_dataset_batches(data, batch_size))
    elif isinstance(data, torch.Tensor):
        batches = [_as_batch(data)]
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        items = list(data)
        # A flat list of ints is one sequence, not many batches.
        if items and all(isinstance(x, int) for x in items):
            items = [items]
        batches = [_as_batch(item) for item in items]
    else:
        raise TypeError(
            "calibration_data must be a datasets.Dataset, a tensor, or an iterable of token-id batches; "
            f"got {type(data).__name__}"
        )
    if not batches:
        raise ValueError("calibration_data is empty")
    return batches
