"""The projected weight ``W_c = scale · P_out · W · P_in + A`` and the module that owns P and A."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def project_weight(
    weight: torch.Tensor,
    p_in: torch.Tensor | None,
    p_out: torch.Tensor | None,
    a: torch.Tensor,
    scale: float = 1.0,
) -> torch.Tensor:
    """``scale · P_out · W · P_in + A`` with ``W`` viewed as ``chunks × out × in``.

    ``p_in``: (in_base, in_target) or None; ``p_out``: (chunks, out_target, out_base) or None, one
    block per fused output chunk (phi3's gate_up). The product order with fewer FLOPs is used.
    """
    chunks = p_out.shape[0] if p_out is not None else 1
    w = weight.to(a.dtype).reshape(chunks, -1, weight.shape[-1])  # (chunks, out_base, in_base)
    if p_out is not None and p_in is not None:
        out_t, out_b = p_out.shape[1:]
        in_b, in_t = p_in.shape
        if out_t * in_b * (out_b + in_t) <= out_b * in_t * (in_b + out_t):
            w = (p_out @ w) @ p_in
        else:
            w = p_out @ (w @ p_in)
    elif p_out is not None:
        w = p_out @ w
    elif p_in is not None:
        w = w @ p_in
    w = w.reshape(a.shape)
    return a + (w * scale if scale != 1.0 else w)


def one_hot_columns(base: int, index: torch.Tensor) -> torch.Tensor:
    """(base × k) selection matrix S with ``x @ S == x[..., index]``."""
    p = torch.zeros(base, len(index))
    p[index, torch.arange(len(index))] = 1.0
    return p


class Projection(nn.Module):
    """Trainable P_in / P_out / A of one frozen base weight (each matrix owns its own).

    The base module is referenced, not registered: its weight stays in (and is saved with) the base
    model only, frozen, in whatever dtype the base holds. ``row_index`` is a fixed gather of rows
    applied first (kept token ids of a pruned vocabulary: never a dense projection over 262k rows).
    """

    def __init__(
        self,
        base_module: nn.Module,
        in_index: torch.Tensor | None,
        out_index: torch.Tensor | None,
        out_chunks: int = 1,
        scale: float = 1.0,
        row_index: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if row_index is not None and out_index is not None:
            raise ValueError("a weight's rows are either gathered (row_index) or projected (out_index), not both")
        self._base = (base_module,)  # a tuple hides it from nn.Module registration
        self.scale = scale
        self.register_buffer("row_index", row_index, persistent=False)
        out_base, in_base = base_module.weight.shape
        if row_index is not None:
            out_base = len(row_index)
        chunk = out_base // out_chunks
        # A side that keeps every dimension in order needs no projection (an identity P is dead weight).
        if in_index is not None and torch.equal(in_index, torch.arange(in_base)):
            in_index = None
        if out_index is not None and torch.equal(out_index, torch.arange(chunk)):
            out_index = None
        if in_index is not None:
            self.p_in = nn.Parameter(one_hot_columns(in_base, in_index))
        else:
            self.register_parameter("p_in", None)
        if out_index is not None:
            p_out = one_hot_columns(chunk, out_index).T.contiguous()
            self.p_out = nn.Parameter(p_out.unsqueeze(0).repeat(out_chunks, 1, 1))
        else:
            self.register_parameter("p_out", None)
        out_t = out_base if out_index is None else out_chunks * len(out_index)
        in_t = in_base if in_index is None else len(in_index)
        self.a = nn.Parameter(torch.zeros(out_t, in_t))

    @property
    def base_weight(self) -> torch.Tensor:
        return self._base[0].weight

    def _trainable(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in (("p_in", self.p_in), ("p_out", self.p_out), ("a", self.a)) if p is not None}

    def _project(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        weight = self.base_weight
        if self.row_index is not None:
            weight = weight.index_select(0, self.row_index)
        return project_weight(weight, params.get("p_in"), params.get("p_out"), params["a"], self.scale)

    def forward(self) -> torch.Tensor:
        return self._project(self._trainable())

    def forward_with_vjp(self) -> tuple[torch.Tensor, Callable[[torch.Tensor], dict[str, torch.Tensor]]]:
        """``W_c`` outside autograd, and a function mapping ∂L/∂W_c to ∂L/∂{P_in, P_out, A}.

        The products' intermediates are kept for the VJP, so pushing a step's gradient costs two
        matrix products per factor and no recomputation of ``W_c``.
        """
        params = {name: p.detach() for name, p in self._trainable().items()}
        weight, vjp = torch.func.vjp(self._project, params)
        return weight.detach(), lambda grad: vjp(grad)[0]

    def accumulate_grad(self, grads: dict[str, torch.Tensor]) -> None:
        """Add gradients (as returned by :meth:`forward_with_vjp`'s function) to P and A."""
        for name, param in self._trainable().items():
            grad = grads[name].to(param.dtype)
            param.grad = grad if param.grad is None else param.grad + grad

    def extra_repr(self) -> str:
        return f"base={tuple(self.base_weight.shape)}, target={tuple(self.a.shape)}, scale={self.scale:g}"
