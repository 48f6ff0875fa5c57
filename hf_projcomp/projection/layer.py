"""The projected weight ``W_c = scale · P_out · W · P_in + A`` and the module that owns P and A."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn


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


def one_hot_columns(base: int, index: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """(base × k) selection matrix S with ``x @ S == x[..., index]``; an index with leading dimensions
    (one row per expert) gives one matrix per row."""
    index = index.to(device)
    p = torch.zeros(*index.shape[:-1], base, index.shape[-1], device=device)
    return p.scatter_(-2, index.unsqueeze(-2), 1.0)


def _keeps_all(index: torch.Tensor, size: int) -> bool:
    return index.shape[-1] == size and bool((index == torch.arange(size, device=index.device)).all())


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
    """

    row_index: torch.Tensor | None  # a buffer

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
        if in_index is not None:
            self.p_in = nn.Parameter(one_hot_columns(in_base, in_index, device))
        else:
            self.register_parameter("p_in", None)
        if out_index is not None:
            p_out = one_hot_columns(chunk, out_index, device).mT.unsqueeze(-3)  # a chunk dimension
            self.p_out = nn.Parameter(p_out.repeat_interleave(out_chunks, dim=-3).contiguous())
        else:
            self.register_parameter("p_out", None)
        out_t = out_base if out_index is None else out_chunks * out_index.shape[-1]
        in_t = in_base if in_index is None else in_index.shape[-1]
        self.a = nn.Parameter(torch.zeros((*lead, out_t, in_t) if base.dim() >= 2 else (out_t,), device=device))

    @property
    def base_weight(self) -> torch.Tensor:
        """The frozen base tensor this projects, as a matrix (a bias as one column; experts stacked)."""
        base = getattr(self._base[0], self._tensor)
        if self._transposed:
            return base.mT
        return base.unsqueeze(-1) if base.dim() == 1 else base

    def _trainable(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in (("p_in", self.p_in), ("p_out", self.p_out), ("a", self.a)) if p is not None}

    def _project(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        weight = self.base_weight
        if self.row_index is not None:
            weight = weight.index_select(0, self.row_index)
        with _without_autocast(weight.device):
            projected = project_weight(weight, params.get("p_in"), params.get("p_out"), params["a"], self.scale)
        return projected.mT if self._transposed else projected

    def forward(self) -> torch.Tensor:
        return self._project(self._trainable())

    def forward_with_vjp(
        self, reusable: bool = False
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], dict[str, torch.Tensor]]]:
        """``W_c`` outside autograd, and a function mapping ∂L/∂W_c to ∂L/∂{P_in, P_out, A}.

        The product's graph (one float32 intermediate, see :func:`project_weight`) is kept until the
        function is called (every time it is called if ``reusable``), so pushing a gradient needs no
        recomputation of ``W_c``.
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
        """Add gradients (as returned by :meth:`forward_with_vjp`'s function) to P and A."""
        for name, param in self._trainable().items():
            # In the parameter's own (contiguous) layout: torch's fused AdamW (the Trainer's default)
            # reads a transposed-view grad (Conv1D's W_c) in storage order, i.e. scrambled.
            grad = grads[name].to(param.dtype).contiguous()
            param.grad = grad if param.grad is None else param.grad + grad

    def extra_repr(self) -> str:
        return f"base={tuple(self.base_weight.shape)}, target={tuple(self.a.shape)}, scale={self.scale:g}"
