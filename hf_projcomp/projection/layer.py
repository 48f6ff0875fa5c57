"""The projected weight ``W_c = scale · P_out · W · P_in + A`` and the module that owns P and A (dense, or
``P = S + U·Vᵀ`` with ``ProjCompConfig.projection_rank``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from ..config import check_projection_rank


def project_weight(
    weight: torch.Tensor,
    p_in: torch.Tensor | None,
    p_out: torch.Tensor | None,
    a: torch.Tensor,
    scale: float = 1.0,
) -> torch.Tensor:
    """``scale · P_out · W · P_in + A`` with ``W`` viewed as ``[experts ×] chunks × out × in``,
    differentiable in ``p_in``, ``p_out`` and ``a`` (``W`` is frozen).

    ``p_in``: (in_base, in_target), or (experts, in_base, in_target) for one per expert, or None;
    ``p_out``: ([experts ×] chunks, out_target, out_base) or None, one block per fused output chunk
    (phi3's gate_up). A P without the experts dimension is shared by every expert. The product order
    with fewer FLOPs is used.
    ``W`` may be held in a lower precision than P and A: it is cast per call and the cast is never
    kept for the backward pass (which casts again), so a bfloat16 base costs no float32 copy of
    itself while gradients are pending.
    """
    return _ProjectedWeight.apply(weight, p_in, p_out, a, scale)


def _cheaper_left_first(p_in: torch.Tensor, p_out: torch.Tensor) -> bool:
    """Whether ``(P_out · W) · P_in`` costs fewer FLOPs than ``P_out · (W · P_in)``."""
    out_t, out_b = p_out.shape[-2:]
    in_b, in_t = p_in.shape[-2:]
    return out_t * in_b * (out_b + in_t) <= out_b * in_t * (in_b + out_t)


class _ProjectedWeight(torch.autograd.Function):
    """:func:`project_weight` with a hand-written backward that saves the frozen ``W`` as given (it is
    alive anyway) and at most one float32 product, instead of autograd's float32 cast of ``W``."""

    @staticmethod
    def forward(ctx, weight, p_in, p_out, a, scale):
        chunks = p_out.shape[-3] if p_out is not None else 1
        view = (*weight.shape[:-2], chunks, -1, weight.shape[-1])  # ([experts,] chunks, out_base, in_base)
        w = weight.to(a.dtype).reshape(view)
        ctx.p_in_shape = None if p_in is None else p_in.shape
        if p_in is not None and p_in.dim() == 3:  # one per expert, shared by the expert's chunks
            p_in = p_in.unsqueeze(-3)
        left = right = None  # P_out · W or W · P_in, whichever the product went through
        if p_out is not None and p_in is not None:
            if _cheaper_left_first(p_in, p_out):
                left = p_out @ w
                product = left @ p_in
            else:
                right = w @ p_in
                product = p_out @ right
        elif p_out is not None:
            product = p_out @ w
        elif p_in is not None:
            product = w @ p_in
        else:
            product = w
        ctx.save_for_backward(weight, p_in, p_out, left, right)
        ctx.scale, ctx.view, ctx.dtype, ctx.product_shape = scale, view, a.dtype, product.shape
        product = product.reshape(a.shape)
        return a + (product * scale if scale != 1.0 else product)

    @staticmethod
    def backward(ctx, grad):
        weight, p_in, p_out, left, right = ctx.saved_tensors
        need_in, need_out, need_a = ctx.needs_input_grad[1:4]
        g = grad.reshape(ctx.product_shape)  # ([experts,] chunks, out_target, in_target)
        if ctx.scale != 1.0:
            g = g * ctx.scale

        def w() -> torch.Tensor:
            return weight.to(ctx.dtype).reshape(ctx.view)

        grad_in = grad_out = None
        if need_in and p_in is not None:
            if left is None:  # ∂/∂P_in = Σ (P_out · W)ᵀ · G over what P_in is shared by
                left = w() if p_out is None else p_out @ w()
            grad_in = _sum_to(left.mT @ g, p_in.shape).reshape(ctx.p_in_shape)
        if need_out and p_out is not None:
            if right is None:  # ∂/∂P_out = G · (W · P_in)ᵀ
                grad_out = g @ w().mT if p_in is None else (g @ p_in.mT) @ w().mT
            else:
                grad_out = g @ right.mT
            grad_out = _sum_to(grad_out, p_out.shape)
        return None, grad_in, grad_out, grad if need_a else None, None  # grad has A's own shape


def _sum_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``grad`` summed over the leading dimensions a broadcast parameter of ``shape`` was shared by."""
    lead = grad.dim() - len(shape)
    grad = grad.sum(dim=tuple(range(lead))) if lead else grad
    shared = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(dim=shared, keepdim=True) if shared else grad


def _without_autocast(device: torch.device) -> AbstractContextManager:
    # W_c is a weight, not an activation: under a mixed-precision forward (Trainer's bf16=True, TRL's
    # default) the product still runs in P's and A's float32; the layers cast W_c when they use it.
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


def one_hot_columns(
    base: int, index: torch.Tensor, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """(base × k) selection matrix S with ``x @ S == x[..., index]``; an index with leading dimensions
    (one row per expert) gives one matrix per row."""
    index = index.to(device)
    p = torch.zeros(*index.shape[:-1], base, index.shape[-1], device=device, dtype=dtype)
    return p.scatter_(-2, index.unsqueeze(-2), 1.0)


def low_rank_projection(index: torch.Tensor, u: torch.Tensor, v: torch.Tensor, side: str) -> torch.Tensor:
    """``P = S + U·Vᵀ``: S the fixed one-hot selection at ``index`` (rebuilt here, never trained or saved
    dense), U (rows × r) and V (cols × r) its trainable low-rank correction; differentiable in U and V.

    ``side="in"``: P_in (…, in_base, k), U (…, in_base, r), V (…, k, r).
    ``side="out"``: P_out (…, chunks, k, out_base), U (…, chunks, k, r), V (…, chunks, out_base, r); S is
    the same for every chunk (as the dense P_out starts).
    """
    if side == "in":
        selection = one_hot_columns(u.shape[-2], index, u.device, u.dtype)
    else:
        selection = one_hot_columns(v.shape[-2], index, u.device, u.dtype).mT.unsqueeze(-3)
    return selection + u @ v.mT


def _keeps_all(index: torch.Tensor, size: int) -> bool:
    return index.shape[-1] == size and bool((index == torch.arange(size, device=index.device)).all())


LOW_RANK_SEED = 0  # seeds the V factors of a low-rank P (ProjCompConfig.projection_rank)
# Dense P's names, and the low-rank factors (U, V) that replace each when ProjCompConfig.projection_rank is set.
_SIDES = ("in", "out")
_FACTORS = tuple(f"p_{side}_{factor}" for side in _SIDES for factor in ("u", "v"))


class Projection(nn.Module):
    """Trainable P_in / P_out / A of one frozen base weight (each matrix owns its own).

    The base module is referenced, not registered: its weight stays in (and is saved with) the base
    model only, frozen, in whatever dtype the base holds. ``row_index`` is a fixed gather of rows
    applied first (kept token ids of a pruned vocabulary: never a dense projection over 262k rows).
    ``tensor="bias"`` projects the module's bias instead (an out × 1 weight: P_out and a 1-D A).
    ``transposed``: the module stores its weight in × out (GPT-2's ``Conv1D``); P and A follow the
    out × in convention and ``W_c`` is handed back in the module's own layout.
    A mixture's fused expert weights (experts × out × in) get an A per expert, a P per expert on a
    side whose index has a row per expert (d_ff), and one shared P on the other side (d_model).

    ``rank``: None holds each P dense (``p_in``, ``p_out``). An int r holds it as ``P = S + U·Vᵀ``
    (:func:`low_rank_projection`): the selection's indices as buffers (``in_index``, ``out_index``) and
    the factors ``p_in_u``/``p_in_v``, ``p_out_u``/``p_out_v``, U = 0 and V ~ N(0, 1/r) drawn from
    ``generator``, so U·Vᵀ = 0 exactly and step 0 equals the dense one-hot start. r is clipped to
    min(rows, cols) of each P (a larger rank adds nothing: U·Vᵀ is then already unconstrained).
    """

    row_index: torch.Tensor | None  # a buffer
    in_index: torch.Tensor | None  # buffers of a low-rank P's selection
    out_index: torch.Tensor | None

    def __init__(
        self,
        base_module: nn.Module,
        in_index: torch.Tensor | None,
        out_index: torch.Tensor | None,
        out_chunks: int = 1,
        scale: float = 1.0,
        row_index: torch.Tensor | None = None,
        tensor: str = "weight",
        transposed: bool = False,
        rank: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if row_index is not None and out_index is not None:
            raise ValueError("a weight's rows are either gathered (row_index) or projected (out_index), not both")
        self._base = (base_module,)  # a tuple hides it from nn.Module registration
        self._tensor = tensor
        self._transposed = transposed
        self.scale = scale
        base = getattr(base_module, tensor)
        base = base.mT if transposed else base
        device = base.device  # P, A and indices live beside the weight they project
        self.register_buffer("row_index", None if row_index is None else row_index.to(device))
        lead = tuple(base.shape[:-2])  # (experts,) for fused expert weights
        out_base, in_base = base.shape[-2:] if base.dim() >= 2 else (base.shape[0], 1)
        if row_index is not None:
            out_base = len(row_index)
        chunk = out_base // out_chunks
        # A side that keeps every dimension in order needs no projection (an identity P is dead weight).
        if in_index is not None and _keeps_all(in_index, in_base):
            in_index = None
        if out_index is not None and _keeps_all(out_index, chunk):
            out_index = None
        low_rank = _LowRank(rank, generator, device)
        self._add_side("in", in_base, in_index, 1, low_rank)
        self._add_side("out", chunk, out_index, out_chunks, low_rank)
        out_t = out_base if out_index is None else out_chunks * out_index.shape[-1]
        in_t = in_base if in_index is None else in_index.shape[-1]
        self.a = nn.Parameter(torch.zeros((*lead, out_t, in_t) if base.dim() >= 2 else (out_t,), device=device))

    def _add_side(self, side: str, base: int, index: torch.Tensor | None, chunks: int, low_rank: _LowRank) -> None:
        """P of one side (None where it keeps every dimension): dense one-hot, or S's index and U, V."""
        p = u = v = kept = None
        if index is not None and low_rank.rank is None:
            dense = one_hot_columns(base, index, low_rank.device)
            if side == "out":  # (…, chunks, k, base): one block per fused output chunk
                dense = dense.mT.unsqueeze(-3).repeat_interleave(chunks, dim=-3).contiguous()
            p = nn.Parameter(dense)
        elif index is not None:
            kept = index.to(low_rank.device, copy=True)  # its own: shared tensors would be saved once
            lead = (*index.shape[:-1], chunks) if side == "out" else tuple(index.shape[:-1])
            rows, cols = (base, index.shape[-1]) if side == "in" else (index.shape[-1], base)
            u, v = low_rank.factors(lead, rows, cols)
        self.register_buffer(f"{side}_index", kept)
        self.register_parameter(f"p_{side}", p)
        self.register_parameter(f"p_{side}_u", u)
        self.register_parameter(f"p_{side}_v", v)

    @property
    def base_weight(self) -> torch.Tensor:
        """The frozen base tensor this projects, as a matrix (a bias as one column; experts stacked)."""
        base = getattr(self._base[0], self._tensor)
        if self._transposed:
            return base.mT
        return base.unsqueeze(-1) if base.dim() == 1 else base

    def _trainable(self) -> dict[str, nn.Parameter]:
        names = ("p_in", "p_out", *_FACTORS, "a")
        return {name: p for name in names if (p := getattr(self, name)) is not None}

    def projection_parameters(self) -> list[nn.Parameter]:
        """The parameters of P: dense ``p_in``/``p_out``, or their low-rank factors U and V (what
        ``ProjCompTrainer``'s ``projection_learning_rate`` applies to)."""
        return [p for name, p in self._trainable().items() if name != "a"]

    def _matrices(self, params: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(P_in, P_out) from ``params``: dense as given, or materialised from S, U and V."""
        matrices = []
        for side in _SIDES:
            u = params.get(f"p_{side}_u")
            index = getattr(self, f"{side}_index")
            if u is None or index is None:
                matrices.append(params.get(f"p_{side}"))
            else:
                matrices.append(low_rank_projection(index, u, params[f"p_{side}_v"], side))
        return matrices[0], matrices[1]

    def _project(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        weight = self.base_weight
        if self.row_index is not None:
            weight = weight.index_select(0, self.row_index)
        with _without_autocast(weight.device):
            p_in, p_out = self._matrices(params)
            projected = project_weight(weight, p_in, p_out, params["a"], self.scale)
        return projected.mT if self._transposed else projected

    def forward(self) -> torch.Tensor:
        return self._project(self._trainable())

    def forward_with_vjp(
        self, reusable: bool = False
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], dict[str, torch.Tensor]]]:
        """``W_c`` outside autograd, and a function mapping ∂L/∂W_c to the gradients of every trainable
        tensor (P_in, P_out or their factors U and V, and A).

        The product's graph (one float32 intermediate, see :func:`project_weight`; with low-rank P also
        the materialised P's) is kept until the function is called (every time it is called if
        ``reusable``), so pushing a gradient needs no recomputation of ``W_c``.
        """
        leaves = {name: p.detach().requires_grad_(True) for name, p in self._trainable().items()}
        with torch.enable_grad():
            weight = self._project(leaves)

        def vjp(grad: torch.Tensor) -> dict[str, torch.Tensor]:
            return dict(
                zip(
                    leaves, torch.autograd.grad(weight, list(leaves.values()), grad, retain_graph=reusable), strict=True
                )
            )

        return weight.detach(), vjp

    def accumulate_grad(self, grads: dict[str, torch.Tensor]) -> None:
        """Add gradients (as returned by :meth:`forward_with_vjp`'s function) to P (or U, V) and A."""
        for name, param in self._trainable().items():
            # In the parameter's own (contiguous) layout: torch's fused AdamW (the Trainer's default)
            # reads a transposed-view grad (Conv1D's W_c) in storage order, i.e. scrambled.
            grad = grads[name].to(param.dtype).contiguous()
            param.grad = grad if param.grad is None else param.grad + grad

    def extra_repr(self) -> str:
        ranks = {p.shape[-1] for name, p in self._trainable().items() if name.endswith("_u")}
        rank = f", rank={max(ranks)}" if ranks else ""
        return f"base={tuple(self.base_weight.shape)}, target={tuple(self.a.shape)}, scale={self.scale:g}{rank}"


class _LowRank:
    """How :class:`Projection` creates the factors of a low-rank P (rank None: P stays dense)."""

    def __init__(self, rank: int | None, generator: torch.Generator | None, device: torch.device) -> None:
        check_projection_rank(rank)
        self.rank, self.device = rank, device
        self.generator = generator

    def factors(self, lead: tuple[int, ...], rows: int, cols: int) -> tuple[nn.Parameter, nn.Parameter]:
        """U = 0 (… × rows × r) and V (… × cols × r) with entries of variance 1/r, r clipped to min(rows, cols).

        Variance 1/r: a per-entry step η on U (AdamW's) moves P's entries by sums of r terms of size η/√r,
        of order η as for a dense P, so ``projection_learning_rate`` keeps its scale (by reasoning, not
        measured)."""
        assert self.rank is not None  # only called for a low-rank P
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(LOW_RANK_SEED)
        rank = min(self.rank, rows, cols)
        v = torch.randn(*lead, cols, rank, generator=self.generator) / math.sqrt(rank)  # on the CPU: seeded anywhere
        u = torch.zeros(*lead, rows, rank, device=self.device)
        return nn.Parameter(u), nn.Parameter(v.to(self.device))
