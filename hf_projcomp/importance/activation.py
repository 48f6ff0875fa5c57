"""Activation importance (Minitron style), measured with forward hooks on calibration batches.

d_model: sum over tokens of |output| of every d_model norm (they all feed from/into the residual
stream); d_ff: sum over tokens of |input of down_proj| (the FFN intermediate activation), per layer.
In a mixture of experts, per expert over the tokens routed to it, each scaled by its routing weight
(what the expert's output is multiplied by). ``power=2`` and per-token weights give the act²
variants (COMPACT's common-token weighting).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..architectures import ArchSpec, block_norm_modules, ffn_size
from .calibration import Batch
from .scores import Scores

TokenWeight = Callable[[torch.Tensor], torch.Tensor]  # input_ids (B, T) -> weights (B, T)


@torch.no_grad()
def activation_importance(
    model: PreTrainedModel,
    spec: ArchSpec,
    batches: Sequence[Batch],
    power: int = 1,
    token_weight: TokenWeight | None = None,
    progress: bool = True,
    predicted_mass: torch.Tensor | None = None,
    mass_weight: TokenWeight | None = None,
    ffn_gram: torch.Tensor | None = None,
) -> Scores:
    """Per-dimension activation scores; see the module docstring.

    ``predicted_mass`` (vocab,), if given, receives the sum over calibration positions of the model's
    next-token probabilities: a smoothed unigram estimate that also ranks tokens the calibration
    text never used (COMPACT's vocabulary ranking reads it), at no extra forward pass.
    ``mass_weight`` maps the tokens that actually follow (B, T-1) to the weight of each position's
    prediction (default: every position but the last counts once).
    ``ffn_gram`` (layers, d_ff, d_ff), if given, receives ``Σ_t w_t h_t h_tᵀ`` of each layer's
    down_proj input ``h`` under the same token weights ``w`` (for the least-squares refit of
    :mod:`hf_projcomp.compact.compensation`; dense FFNs only).
    """
    config = model.config
    if ffn_gram is not None and spec.experts:
        raise ValueError("ffn_gram is for dense FFNs; this model is a mixture of experts")
    device = next(model.parameters()).device
    hidden = torch.zeros(config.hidden_size, dtype=torch.float64, device=device)
    ffn = torch.zeros(
        config.num_hidden_layers, *spec.ffn_groups(config), ffn_size(config), dtype=torch.float64, device=device
    )
    weights: list[torch.Tensor] = []  # the current batch's per-position weights, shape (B, T, 1)

    def accumulate(acc: torch.Tensor, x: torch.Tensor) -> None:
        acc += (x.detach().double().abs().pow(power) * weights[0]).sum(dim=(0, 1))

    def accumulate_ffn(i: int, x: torch.Tensor) -> None:
        accumulate(ffn[i], x)
        if ffn_gram is not None:
            keep = weights[0][..., 0] > 0  # weight-0 positions add nothing: skip their rows
            rows, w = x.detach()[keep].float(), weights[0][keep].float()
            ffn_gram[i] += ((rows * w).T @ rows).to(ffn_gram.dtype)

    layers = model.get_submodule(spec.layers)
    norm_modules = [module for layer in layers for _, module in block_norm_modules(layer, spec)]
    norm_modules.append(model.get_submodule(spec.final_norm))
    handles = [m.register_forward_hook(lambda _m, _i, out: accumulate(hidden, out)) for m in norm_modules]
    for i, layer in enumerate(layers):
        if spec.experts:
            hook = lambda m, args, i=i: _accumulate_experts(ffn[i], m, *args[:3], weights[0], power)  # noqa: E731
            handles.append(layer.get_submodule(spec.experts).register_forward_pre_hook(hook))
            continue
        down = layer.get_submodule(spec.ffn_down)
        handles.append(down.register_forward_pre_hook(lambda _m, args, i=i: accumulate_ffn(i, args[0])))

    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(batches, desc="Calibrating", disable=not progress):
            ids = batch["input_ids"].to(device)
            mask = batch["attention_mask"].to(device)
            w = mask.double() if token_weight is None else mask.double() * token_weight(ids).double()
            weights[:] = [w.unsqueeze(-1)]
            if predicted_mass is None:  # only the hooks matter: skip the LM head but for one position
                model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
                continue
            w_mass = (mask[:, :-1] * mask[:, 1:]).double()
            if mass_weight is not None:
                w_mass = w_mass * mass_weight(ids[:, 1:]).double()
            # Logits only where a prediction counts: with a 262k vocabulary the LM head is a large
            # share of the forward pass, and COMPACT's mass_weight keeps a few percent of positions.
            positions = w_mass.gt(0).any(0).nonzero().squeeze(1)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=positions).logits
            w_mass = w_mass[:, positions]
            keep = w_mass > 0
            rows, w_rows = logits[keep], w_mass[keep]
            for a in range(0, len(rows), 256):  # bounded memory with a 262k vocabulary
                probs = rows[a : a + 256].float().softmax(-1) * w_rows[a : a + 256, None].float()
                predicted_mass += probs.sum(0).to(predicted_mass.device, predicted_mass.dtype)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return Scores(hidden.cpu(), ffn.cpu())


def _accumulate_experts(
    acc: torch.Tensor,
    experts: torch.nn.Module,
    hidden: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    position_weight: torch.Tensor,
    power: int,
) -> None:
    """Add each expert's |routing weight · act(gate) · up|^power over the tokens routed to it.

    ``hidden`` (tokens × d_model) is what the experts module is called with, in transformers' fused
    layout (``gate_up_proj`` experts × 2·d_ff × d_model, [gate; up]); the intermediate activation is
    recomputed here because the fused kernels expose no module at the down projection's input.
    """
    position_weight = position_weight.reshape(-1).to(torch.float64)
    for e in top_k_index.unique().tolist():
        if e >= acc.shape[0]:  # transformers' placeholder for dropped routes
            continue
        token, slot = (top_k_index == e).nonzero(as_tuple=True)
        gate, up = torch.nn.functional.linear(hidden[token], experts.gate_up_proj[e]).chunk(2, dim=-1)
        act = (experts.act_fn(gate) * up).double() * top_k_weights[token, slot, None].double()
        acc[e] += (act.abs().pow(power) * position_weight[token, None]).sum(0)
