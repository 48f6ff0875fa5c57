"""Hard pruning by index selection: the step-0 reference of projected compression (one-hot P, A = 0)
built by plain index gathers, and a compressor of its own (the "hard-prune + retrain" baseline)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from .architectures import get_arch_spec
from .plan import CompressionPlan, Selection, WeightPlan, build_plan
from .sizing import validate_target_sizes
from .target import build_target_model


def gather_weight(tensor: torch.Tensor, entry: WeightPlan, selection: Selection) -> torch.Tensor:
    """Gather the kept rows/columns of one planned weight (times its fixed scale); a bias as one column."""
    if entry.is_bias:
        return _gather(tensor.unsqueeze(-1), entry, selection).squeeze(-1)
    if entry.transposed:
        return _gather(tensor.mT, entry, selection).mT.contiguous()
    return _gather(tensor, entry, selection)


def _gather(tensor: torch.Tensor, entry: WeightPlan, selection: Selection) -> torch.Tensor:
    out_idx, in_idx = selection.index(entry.out_dim, entry.layer), selection.index(entry.in_dim, entry.layer)
    lead = tensor.shape[:-2]  # (experts,) for a mixture's fused weights
    if out_idx is not None:
        chunks = tensor.reshape(*lead, entry.out_chunks, -1, tensor.shape[-1])
        tensor = _take(chunks, -2, out_idx.to(tensor.device)).reshape(*lead, -1, tensor.shape[-1])
    if in_idx is not None:
        tensor = _take(tensor, -1, in_idx.to(tensor.device))
    # Scales fold in at float32: Gemma's embedding ratio would round twice in half precision.
    return tensor.float() * entry.scale if entry.scale != 1.0 else tensor


def _take(tensor: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``index_select`` along ``dim``; an index with leading dimensions (one row of indices per
    expert) picks per leading position, broadcasting over the dimensions between."""
    if index.dim() == 1:
        return tensor.index_select(dim, index)
    dim %= tensor.dim()
    shape = list(tensor.shape)
    shape[dim] = index.shape[-1]
    view = list(index.shape[:-1]) + [1] * (tensor.dim() - index.dim() + 1)
    view[dim] = index.shape[-1]
    return tensor.gather(dim, index.reshape(view).expand(shape))


def gathered_norm(weight: torch.Tensor, hidden: torch.Tensor, offset: float, divide_by: float) -> torch.Tensor:
    """A d_model norm weight (or bias, ``offset`` 0) at the kept indices, with ``divide_by`` folded into
    its effective scale."""
    kept = weight.index_select(0, hidden.to(weight.device))
    return kept if divide_by == 1.0 else (kept.float() + offset) / divide_by - offset


def pruned_tensors(model: PreTrainedModel, plan: CompressionPlan, selection: Selection) -> dict[str, torch.Tensor]:
    """Every planned weight and norm of ``model`` gathered at ``selection``, by target parameter name."""
    params = dict(model.named_parameters(remove_duplicate=False))
    tensors = {e.name: gather_weight(params[e.name], e, selection) for e in plan.weights}
    for norm in plan.norms:
        offset = plan.norm_offset if norm.name.endswith(".weight") else 0.0  # Gemma's 1 + w is the weight's
        tensors[norm.name] = gathered_norm(params[norm.name], selection.hidden, offset, norm.divide_by)
    return tensors


def hard_prune(
    model: PreTrainedModel,
    hidden_indices: Sequence[int] | torch.Tensor,
    intermediate_indices: Sequence[Sequence[int]] | Sequence[torch.Tensor],
    kept_token_ids: Sequence[int] | torch.Tensor | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> PreTrainedModel:
    """A smaller vanilla model keeping the given d_model indices (global), d_ff indices (per layer)
    and, optionally, token ids (``kept_token_ids[new_id] = old_id``), in ``dtype`` (default: the
    base's)."""
    spec = get_arch_spec(model.config)
    selection = Selection.from_lists(hidden_indices, intermediate_indices, kept_token_ids)
    vocab_size = None if selection.vocab is None else len(selection.vocab)
    validate_target_sizes(model.config, selection.hidden_size, selection.intermediate_size, vocab_size)
    plan = build_plan(model, spec, selection.hidden_size)
    return build_target_model(model, selection, pruned_tensors(model, plan, selection), dtype=dtype)


def __getattr__(name: str) -> object:
    if name == "select":  # renamed: hf_projcomp.selection.select is the other, unrelated one
        warnings.warn("hf_projcomp.hard_pruning.select is deprecated: use gather_weight", FutureWarning, stacklevel=2)
        return gather_weight
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["gather_weight", "gathered_norm", "hard_prune", "pruned_tensors"]
