"""Magnitude importance: per-dimension L2 norm of every weight touching that dimension (no data)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ..architectures import FFN, HIDDEN
from ..plan import CompressionPlan
from .scores import Scores


@torch.no_grad()
def magnitude_importance(model: PreTrainedModel, plan: CompressionPlan) -> Scores:
    config = model.config
    hidden = torch.zeros(config.hidden_size, dtype=torch.float64)
    ffn = torch.zeros(config.num_hidden_layers, config.intermediate_size, dtype=torch.float64)
    params = dict(model.named_parameters(remove_duplicate=False))
    for entry in plan.weights:
        if entry.is_bias:
            continue
        sq = params[entry.name].detach().double().pow(2)
        sq = sq.reshape(entry.out_chunks, -1, sq.shape[-1])  # (chunks, out, in)
        for side, per_dim in ((entry.out_dim, sq.sum(dim=(0, 2))), (entry.in_dim, sq.sum(dim=(0, 1)))):
            if side == HIDDEN:
                hidden += per_dim.cpu()
            elif side == FFN:
                ffn[entry.layer] += per_dim.cpu()
    return Scores(hidden.sqrt(), ffn.sqrt())
