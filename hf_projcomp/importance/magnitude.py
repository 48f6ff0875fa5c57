"""Magnitude importance: per-dimension L2 norm of every weight touching that dimension (no data)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ..architectures import FFN, HIDDEN, ffn_size, get_arch_spec
from ..plan import CompressionPlan
from .scores import Scores


@torch.no_grad()
def magnitude_importance(model: PreTrainedModel, plan: CompressionPlan) -> Scores:
    config = model.config
    groups = get_arch_spec(config).ffn_groups(config)  # a mixture ranks each expert's channels apart
    hidden = torch.zeros(config.hidden_size, dtype=torch.float64)
    ffn = torch.zeros(config.num_hidden_layers, *groups, ffn_size(config), dtype=torch.float64)
    params = dict(model.named_parameters(remove_duplicate=False))
    for entry in plan.weights:
        if entry.is_bias:
            continue
        sq = params[entry.name].detach().double().pow(2)
        sq = sq.mT if entry.transposed else sq
        sq = sq.reshape(*sq.shape[:-2], entry.out_chunks, -1, sq.shape[-1])  # ([experts,] chunks, out, in)
        per_out, per_in = sq.sum(dim=(-3, -1)), sq.sum(dim=(-3, -2))  # ([experts,] dim)
        for side, per_dim in ((entry.out_dim, per_out), (entry.in_dim, per_in)):
            if side == HIDDEN:
                hidden += per_dim.reshape(-1, config.hidden_size).sum(0).cpu()
            elif side == FFN:
                ffn[entry.layer] += per_dim.cpu()
    return Scores(hidden.sqrt(), ffn.sqrt())
