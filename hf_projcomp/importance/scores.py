"""Importance scores and the top-k selections they induce."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Scores:
    """Higher is more important. ``hidden``: (d_model,), one global ranking; ``ffn``: (layers, d_ff)."""

    hidden: torch.Tensor
    ffn: torch.Tensor


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, ascending, so kept dimensions stay in their base order."""
    return torch.topk(scores.double(), k, sorted=False).indices.sort().values


def select_indices(scores: Scores, hidden_size: int, intermediate_size: int) -> tuple[list[int], list[list[int]]]:
    hidden = top_k(scores.hidden, hidden_size).tolist()
    ffn = [top_k(layer, intermediate_size).tolist() for layer in scores.ffn]
    return hidden, ffn
