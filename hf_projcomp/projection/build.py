"""The parts a projected-compression tuner is built from, for a given selection: one
:class:`~.layer.Projection` (P_in, P_out, A) per planned weight, and the compressed network."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from ..architectures import VOCAB
from ..hard_pruning import pruned_tensors
from ..plan import CompressionPlan, Selection
from ..target import build_target_model
from .checkpoint import is_norm
from .layer import LOW_RANK_SEED, Projection


def projection_key(param_name: str) -> str:
    """The ``projections`` key of a planned weight: ModuleDict keys can't hold dots; the parameter's module
    path is unique and readable."""
    return param_name.removesuffix(".weight").replace(".", "-")


def build_projections(
    model: PreTrainedModel, plan: CompressionPlan, selection: Selection, rank: int | None = None
) -> nn.ModuleDict:
    """One-hot P at ``selection`` and A = 0 for every planned weight of ``model`` (which they read, frozen);
    with ``rank``, every P as the one-hot S plus U·Vᵀ = 0 (see :class:`~.layer.Projection`)."""
    projections = nn.ModuleDict()
    # One seeded stream for every V, drawn in plan order: the same start on every rank and every run.
    generator = torch.Generator().manual_seed(LOW_RANK_SEED)
    for entry in plan.weights:
        rows = selection.index(entry.out_dim, entry.layer)
        gathered = entry.out_dim == VOCAB
        module_path, tensor = entry.name.rsplit(".", 1)
        projections[projection_key(entry.name)] = Projection(
            model.get_submodule(module_path),
            in_index=selection.index(entry.in_dim, entry.layer),
            out_index=None if gathered else rows,
            out_chunks=entry.out_chunks,
            scale=entry.scale,
            row_index=rows if gathered else None,
            tensor=tensor,
            transposed=entry.transposed,
            rank=rank,
            generator=generator,
        )
    return projections


@torch.no_grad()
def build_compressed(
    model: PreTrainedModel, plan: CompressionPlan, selection: Selection, loaded: dict[str, torch.Tensor] | None = None
) -> PreTrainedModel:
    """The compressed network: the hard-pruned model at ``selection`` (its planned weights are only
    placeholders for W_c), in float32 whatever the base holds, like P and A; ``loaded``: norms to keep.
    Under a meta-device init (``low_cpu_mem_usage`` loading) only its structure, filled once loaded."""
    if meta_init():
        return build_target_model(model, selection, {}, dtype=torch.float32, empty=True)
    small = build_target_model(model, selection, pruned_tensors(model, plan, selection), dtype=torch.float32)
    if loaded:
        small.load_state_dict(loaded, strict=False)
    small.name_or_path = getattr(model, "name_or_path", "")
    return small


def train_only_norms(small: PreTrainedModel) -> None:
    """Freeze the compressed network except its norms (the weights it owns; the rest is W_c)."""
    small.requires_grad_(False)
    for module in small.modules():
        if is_norm(module):
            module.requires_grad_(True)


def meta_init() -> bool:
    """Whether parameters are being created on the meta device (accelerate's ``init_empty_weights``)."""
    probe = nn.Module()
    probe.register_parameter("p", nn.Parameter(torch.empty(0)))
    param = probe._parameters["p"]  # what the module holds: an empty init replaces the one given
    return param is not None and param.is_meta


__all__ = ["build_compressed", "build_projections", "meta_init", "projection_key", "train_only_norms"]
