"""Which tensors of a model shrink, along which sides: the shared map for projecting, pruning, merging.

A plan is derived once from the architecture table and the model's parameter names; projection
(``projection/``) turns each entry into trainable P/A matrices, hard pruning (``hard_pruning.py``) into
index gathers. Tensors not in the plan keep their shape and are copied (q/k/v biases, q/k norms).
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from .architectures import FFN, HIDDEN, VOCAB, ArchSpec, block_norm_modules


@dataclass(frozen=True)
class WeightPlan:
    """A 2-D weight (out × in, torch layout) that shrinks on at least one side, the bias of a linear
    whose output side shrinks (1-D, treated as an out × 1 weight: its rows go with the weight's), or
    the fused weights of a layer's experts (experts × out × in: a d_ff side keeps each expert's own
    channels)."""

    name: str  # parameter name in the model, e.g. "model.layers.0.mlp.up_proj.weight"
    out_dim: str | None
    in_dim: str | None
    layer: int | None = None  # which per-layer d_ff selection applies
    out_chunks: int = 1
    scale: float = 1.0  # fixed factor on the projected weight (Gemma's embedding scale ratio)
    transposed: bool = False  # stored in × out (GPT-2's Conv1D): read and written through a transpose

    @property
    def is_bias(self) -> bool:
        return self.name.endswith(".bias")


@dataclass(frozen=True)
class NormPlan:
    """A d_model norm weight (or LayerNorm bias), gathered at the kept hidden indices."""

    name: str
    # Folded into the effective scale (w + offset): Gemma's tied head needs it to undo ``scale``.
    divide_by: float = 1.0


@dataclass(frozen=True)
class Selection:
    """Kept indices, ascending: one global d_model set, one d_ff set per layer (per layer and expert in
    a mixture of experts: an experts × d_ff tensor), optional token ids."""

    hidden: torch.Tensor
    ffn: tuple[torch.Tensor, ...]
    vocab: torch.Tensor | None = None

    @classmethod
    def from_lists(
        cls,
        hidden: Sequence[int] | torch.Tensor,
        ffn: Sequence[Sequence[int]] | Sequence[torch.Tensor],
        vocab: Sequence[int] | torch.Tensor | None = None,
    ) -> Selection:
        ffn = tuple(torch.as_tensor(idx, dtype=torch.long) for idx in ffn)
        if len({idx.shape[-1] for idx in ffn}) != 1:
            raise ValueError("intermediate_indices must keep the same number of channels in every layer")
        vocab = None if vocab is None else torch.as_tensor(vocab, dtype=torch.long)
        return cls(torch.as_tensor(hidden, dtype=torch.long), ffn, vocab)

    @property
    def hidden_size(self) -> int:
        return len(self.hidden)

    @property
    def intermediate_size(self) -> int:
        return self.ffn[0].shape[-1]

    def index(self, side: str | None, layer: int | None = None) -> torch.Tensor | None:
        """The kept indices along one side of a planned tensor (None: the side keeps its size)."""
        if side == HIDDEN:
            return self.hidden
        if side == FFN:
            if layer is None:
                raise ValueError("the d_ff side is chosen per layer: pass layer")
            return self.ffn[layer]
        if side == VOCAB:
            return self.vocab
        return None


@dataclass(frozen=True)
class CompressionPlan:
    weights: tuple[WeightPlan, ...]
    norms: tuple[NormPlan, ...]
    tied: bool
    norm_offset: float

    @property
    def embedding(self) -> WeightPlan:
        return self.weights[0]


def is_tied(model: nn.Module, spec: ArchSpec) -> bool:
    head = model.get_submodule(spec.lm_head)
    return head.weight is model.get_submodule(spec.embed).weight


def build_plan(model: PreTrainedModel, spec: ArchSpec, target_hidden: int) -> CompressionPlan:
    """Map every shrinking tensor of ``model`` for a target d_model of ``target_hidden``."""
    base_hidden = model.config.hidden_size
    embed_ratio = spec.embedding_scale(base_hidden) / spec.embedding_scale(target_hidden)
    tied = is_tied(model, spec)

    # The embedding is V × D: rows are tokens, columns d_model (a "linear" whose input side is hidden).
    weights = [WeightPlan(f"{spec.embed}.weight", VOCAB, HIDDEN, scale=embed_ratio)]
    norms: list[tuple[NormPlan, ...]] = []
    for i in range(_layer_count(model, spec)):
        prefix = f"{spec.layers}.{i}"
        for lin in spec.linears:
            name = f"{prefix}.{lin.path}" if lin.experts else f"{prefix}.{lin.path}.weight"
            weights.append(
                WeightPlan(name, lin.out_dim, lin.in_dim, layer=i, out_chunks=lin.out_chunks, transposed=lin.transposed)
            )
            module = None if lin.experts else model.get_submodule(f"{prefix}.{lin.path}")
            if getattr(module, "bias", None) is not None and lin.out_dim is not None:
                # A bias on the head side (q/k/v) keeps its size and is carried over unchanged.
                weights.append(
                    WeightPlan(f"{prefix}.{lin.path}.bias", lin.out_dim, None, layer=i, out_chunks=lin.out_chunks)
                )
        layer = model.get_submodule(prefix)
        norms.extend(_norm_plans(model, f"{prefix}.{n}") for n, _ in block_norm_modules(layer, spec))
    if not tied:
        weights.append(WeightPlan(f"{spec.lm_head}.weight", VOCAB, HIDDEN))
        if getattr(model.get_submodule(spec.lm_head), "bias", None) is not None:  # Phi-2's head
            weights.append(WeightPlan(f"{spec.lm_head}.bias", VOCAB, None))
    # The tied head reuses the scaled embedding; the final norm absorbs 1/scale so logits match.
    norms.append(_norm_plans(model, spec.final_norm, divide_by=embed_ratio if tied else 1.0))
    return CompressionPlan(tuple(weights), tuple(n for group in norms for n in group), tied, spec.norm_offset)


def _layer_count(model: nn.Module, spec: ArchSpec) -> int:
    layers = model.get_submodule(spec.layers)
    if not isinstance(layers, Sized):
        raise TypeError(f"{spec.layers} of {type(model).__name__} is a {type(layers).__name__}, not a list of layers")
    return len(layers)


def _norm_plans(model: nn.Module, path: str, divide_by: float = 1.0) -> tuple[NormPlan, ...]:
    """A norm's weight, and its bias when it has one (LayerNorm): both scale the normalised output."""
    module = model.get_submodule(path)
    names = ["weight"] + (["bias"] if getattr(module, "bias", None) is not None else [])
    return tuple(NormPlan(f"{path}.{name}", divide_by=divide_by) for name in names)


__all__ = ["CompressionPlan", "NormPlan", "Selection", "WeightPlan", "build_plan", "is_tied"]
