"""Activation importance (Minitron style), measured with forward hooks on calibration batches.

d_model: sum over tokens of |output| of every d_model norm (they all feed from/into the residual
stream); d_ff: sum over tokens of |input of down_proj| (the FFN intermediate activation), per layer.
In a mixture of experts, per expert over the tokens routed to it, each scaled by its routing weight
(what the expert's output is multiplied by). ``power=2`` and per-token weights give the act²
variants (COMPACT's common-token weighting).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..architectures import ArchSpec, block_norm_modules, ffn_size
from .calibration import Batch
from .scores import Scores

TokenWeight = Callable[[torch.Tensor], torch.Tensor]  # input_ids (B, T) -> weights (B, T)
MASS_CHUNK = 256  # predicted rows softmaxed at once: bounded memory with a 262k vocabulary


@dataclass
class ActivationStatistics:
    """What one calibration pass measured (see :func:`activation_statistics`).

    ``scores``: the activation importance; ``predicted_mass`` (vocab,) float64 on the CPU, the sum of
    the model's next-token probabilities over the weighted positions; ``ffn_gram`` (layers, d_ff, d_ff)
    float32 on the model's device, ``Σ_t w_t h_t h_tᵀ`` of each layer's down_proj input. Each of the
    last two is None unless asked for.
    """

    scores: Scores
    predicted_mass: torch.Tensor | None = None
    ffn_gram: torch.Tensor | None = None


def activation_importance(
    model: PreTrainedModel,
    spec: ArchSpec,
    batches: Sequence[Batch],
    power: int = 1,
    token_weight: TokenWeight | None = None,
    progress: bool = True,
) -> Scores:
    """Per-dimension activation scores; see the module docstring (and :func:`activation_statistics`
    for what else the same pass can measure)."""
    return activation_statistics(model, spec, batches, power=power, token_weight=token_weight, progress=progress).scores


@torch.no_grad()
def activation_statistics(
    model: PreTrainedModel,
    spec: ArchSpec,
    batches: Sequence[Batch],
    *,
    power: int = 1,
    token_weight: TokenWeight | None = None,
    predicted_mass: bool = False,
    mass_weight: TokenWeight | None = None,
    ffn_gram: bool = False,
    progress: bool = True,
) -> ActivationStatistics:
    """Activation scores and, in the same forward passes, what COMPACT also reads.

    ``token_weight`` maps each batch's input ids (B, T) to per-position weights of the scores
    (default 1; padding counts 0). ``predicted_mass``: also sum the model's next-token probabilities
    over the calibration positions, a smoothed unigram estimate that also ranks tokens the
    calibration text never used (COMPACT's vocabulary ranking reads it). ``mass_weight`` maps the
    tokens that actually follow (B, T-1) to the weight of each position's prediction (default: every
    position but the last counts once). ``ffn_gram``: also sum ``Σ_t w_t h_t h_tᵀ`` of each layer's
    down_proj input ``h`` under the score weights ``w`` (for the least-squares refit of
    :mod:`hf_projcomp.compact.compensation`; dense FFNs only).
    """
    if ffn_gram and spec.experts:
        raise ValueError("ffn_gram is for dense FFNs; this model is a mixture of experts")
    sums = _Sums(model, spec, power, predicted_mass=predicted_mass, ffn_gram=ffn_gram)
    handles = sums.register(model, spec)
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(batches, desc="Calibrating", disable=not progress):
            ids = batch["input_ids"].to(sums.device)
            mask = batch["attention_mask"].to(sums.device)
            w = mask.double() if token_weight is None else mask.double() * token_weight(ids).double()
            sums.weight = w.unsqueeze(-1)
            if sums.mass is None:  # only the hooks matter: skip the LM head but for one position
                model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
            else:
                _add_predictions(sums.mass, model, ids, mask, mass_weight)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return ActivationStatistics(Scores(sums.hidden.cpu(), sums.ffn.cpu()), sums.mass, sums.gram)


class _Sums:
    """The running sums of one calibration pass, and the hooks that add to them."""

    def __init__(
        self, model: PreTrainedModel, spec: ArchSpec, power: int, *, predicted_mass: bool, ffn_gram: bool
    ) -> None:
        config = model.config
        self.device = device = next(model.parameters()).device
        self.power = power
        self.weight = torch.ones(())  # the current batch's per-position weights, shape (B, T, 1)
        self.hidden = torch.zeros(config.hidden_size, dtype=torch.float64, device=device)
        groups, d_ff = spec.ffn_groups(config), ffn_size(config)
        self.ffn = torch.zeros(config.num_hidden_layers, *groups, d_ff, dtype=torch.float64, device=device)
        # Float32 on the model's device: 0.3 GB for Gemma-3-270M, 2.3 GB for Qwen2.5-0.5B.
        shape = (config.num_hidden_layers, d_ff, d_ff)
        self.gram = torch.zeros(shape, dtype=torch.float32, device=device) if ffn_gram else None
        self.mass = torch.zeros(config.vocab_size, dtype=torch.float64) if predicted_mass else None

    def register(self, model: PreTrainedModel, spec: ArchSpec) -> list[RemovableHandle]:
        """Hook every d_model norm's output and every layer's FFN intermediate activation."""
        layers = decoder_layers(model, spec)
        norms = [module for layer in layers for _, module in block_norm_modules(layer, spec)]
        norms.append(model.get_submodule(spec.final_norm))
        handles = [m.register_forward_hook(lambda _m, _args, out: self.add(self.hidden, out)) for m in norms]
        for i, layer in enumerate(layers):
            if spec.experts:
                experts = layer.get_submodule(spec.experts)
                handles.append(experts.register_forward_pre_hook(lambda m, args, i=i: self.add_experts(i, m, args)))
            else:
                down = layer.get_submodule(spec.ffn_down)
                handles.append(down.register_forward_pre_hook(lambda _m, args, i=i: self.add_ffn(i, args[0])))
        return handles

    def add(self, acc: torch.Tensor, x: torch.Tensor) -> None:
        acc += (x.detach().double().abs().pow(self.power) * self.weight).sum(dim=(0, 1))

    def add_ffn(self, i: int, x: torch.Tensor) -> None:
        self.add(self.ffn[i], x)
        if self.gram is not None:
            keep = self.weight[..., 0] > 0  # weight-0 positions add nothing: skip their rows
            rows, w = x.detach()[keep].float(), self.weight[keep].float()
            self.gram[i] += ((rows * w).T @ rows).to(self.gram.dtype)

    def add_experts(self, i: int, experts: torch.nn.Module, args: tuple[Any, ...]) -> None:
        hidden, top_k_index, top_k_weights = args[0], args[1], args[2]
        _accumulate_experts(self.ffn[i], experts, hidden, top_k_index, top_k_weights, self.weight, self.power)


def _add_predictions(
    mass: torch.Tensor, model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, mass_weight: TokenWeight | None
) -> None:
    """Run the batch, adding each counted position's next-token distribution to ``mass``."""
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
    for a in range(0, len(rows), MASS_CHUNK):
        probs = rows[a : a + MASS_CHUNK].float().softmax(-1) * w_rows[a : a + MASS_CHUNK, None].float()
        mass += probs.sum(0).to(mass.device, mass.dtype)


def decoder_layers(model: torch.nn.Module, spec: ArchSpec) -> torch.nn.ModuleList:
    """The model's decoder layers (``spec.layers``)."""
    layers = model.get_submodule(spec.layers)
    if not isinstance(layers, torch.nn.ModuleList):
        raise TypeError(f"{spec.layers} is a {type(layers).__name__}, not the ModuleList of decoder layers")
    return layers


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
    gate_up_proj = experts.get_parameter("gate_up_proj")
    act_fn = experts.get_submodule("act_fn")
    for e in top_k_index.unique().tolist():
        if e >= acc.shape[0]:  # transformers' placeholder for dropped routes
            continue
        token, slot = (top_k_index == e).nonzero(as_tuple=True)
        gate, up = torch.nn.functional.linear(hidden[token], gate_up_proj[e]).chunk(2, dim=-1)
        act = (act_fn(gate) * up).double() * top_k_weights[token, slot, None].double()
        acc[e] += (act.abs().pow(power) * position_weight[token, None]).sum(0)


__all__ = ["ActivationStatistics", "activation_importance", "activation_statistics", "decoder_layers"]
