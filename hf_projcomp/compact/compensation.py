"""Closed-form compensation for pruned FFN channels: a least-squares refit of ``down_proj``.

Dropping d_ff channels ``R`` of a layer removes ``W_R h_R`` from its FFN output (``W``: down_proj's
weight, ``h``: its input, the intermediate activation). The kept columns ``S`` can absorb the part
of it that the kept channels predict: with the calibration Gram matrix ``G = Σ_t w_t h_t h_tᵀ``
(``w``: COMPACT's common-token weights), the columns minimising ``Σ_t w_t ‖W h_t − W'_S h_{t,S}‖²`` are

    W'_S = W G[:, S] G[S, S]⁻¹  =  W_S + W_R G[R, S] G[S, S]⁻¹,

computed in the second form with a ridge ``λ I`` added to ``G[S, S]`` (``λ`` a fraction of its mean
diagonal), which minimises the same error plus ``λ ‖W'_S − W_S‖²``: it damps the correction rather
than the weights. Only the values of the kept columns
change, so the pruned model stays a vanilla one of the base's class (no bias, no new module).

Each layer is refitted to the base layer's own input, not to the pruned predecessors' output (one
pass of calibration, like the importance scores); why there is no second refit on the pruned
model's own activations: ``docs/decisions.md#no-second-refit``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from ..architectures import ArchSpec
from ..importance.activation import decoder_layers

# λ / mean(diag G[S, S]). Chosen on dev text: docs/decisions.md#refit-ridge
REFIT_RIDGE = 0.1


@torch.no_grad()
def refit_columns(
    weight: torch.Tensor, gram: torch.Tensor, kept: torch.Tensor, ridge: float = REFIT_RIDGE
) -> torch.Tensor:
    """The kept columns of ``weight`` (out × d_ff) refitted to reproduce the full product on ``gram``
    (d_ff × d_ff); returns out × len(kept), in float64. The ridge damps the correction, so a large
    one leaves the kept columns as they were."""
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    g = gram.double()
    kept = kept.to(g.device)
    removed = torch.ones(g.shape[0], dtype=torch.bool, device=g.device)
    removed[kept] = False
    w = weight.double().to(g.device)
    g_ss = g[kept][:, kept]
    damp = ridge * g_ss.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
    g_ss = g_ss + damp * torch.eye(len(kept), dtype=g.dtype, device=g.device)
    correction = torch.linalg.solve(g_ss, g[kept][:, removed] @ w[:, removed].T)  # |S| × out
    return w[:, kept] + correction.T


@torch.no_grad()
def refit_down_proj(
    base: PreTrainedModel,
    spec: ArchSpec,
    grams: torch.Tensor,
    intermediate_indices: Sequence[torch.Tensor],
    ridge: float = REFIT_RIDGE,
) -> list[torch.Tensor]:
    """Every layer's down_proj weight for these kept d_ff channels (and the whole d_model, as COMPACT
    prunes): refitted where the layer lost channels, the base's kept columns where it lost none;
    ``grams`` (layers, d_ff, d_ff) from :func:`~hf_projcomp.importance.activation_statistics`'s
    ``ffn_gram``. In float32, whatever the base's dtype (a bf16 base built in float32 keeps the
    solve's precision), and in the module's own layout (GPT-2's Conv1D: in × out); load them into
    the pruned model with :func:`load_down_proj`."""
    if spec.experts:
        raise ValueError("the down_proj refit is for dense FFNs; this model is a mixture of experts")
    # GPT-2's Conv1D stores in × out: work on the out × in view.
    transposed = any(lin.transposed for lin in spec.linears if lin.path == spec.ffn_down)
    layers = decoder_layers(base, spec)
    weights = []
    for i, kept in enumerate(intermediate_indices):
        kept = torch.as_tensor(kept)
        weight: torch.Tensor = layers[i].get_parameter(f"{spec.ffn_down}.weight")
        weight = weight.mT if transposed else weight
        fitted = (
            weight[:, kept.to(weight.device)]
            if len(kept) == grams.shape[-1]
            else refit_columns(weight, grams[i], kept, ridge).to(weight.device)
        )
        weights.append((fitted.mT if transposed else fitted).float().contiguous())
    return weights


@torch.no_grad()
def load_down_proj(small: PreTrainedModel, spec: ArchSpec, weights: Sequence[torch.Tensor]) -> None:
    """Copy per-layer down_proj ``weights`` (from :func:`refit_down_proj`) into ``small``, in its dtype;
    a ``ValueError`` when they do not fit its layers (other d_ff channels, another model)."""
    layers = decoder_layers(small, spec)
    if len(weights) != len(layers):
        raise ValueError(f"down_proj has {len(weights)} layers, the model {len(layers)}")
    for i, (layer, weight) in enumerate(zip(layers, weights, strict=True)):
        target = layer.get_parameter(f"{spec.ffn_down}.weight")
        if target.shape != weight.shape:
            raise ValueError(
                f"down_proj[{i}] is {tuple(weight.shape)}, the pruned layer's "
                f"{tuple(target.shape)}: it belongs to other d_ff channels"
            )
        target.copy_(weight)


__all__ = ["REFIT_RIDGE", "load_down_proj", "refit_columns", "refit_down_proj"]
