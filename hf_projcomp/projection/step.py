"""The amortised step: every ``W_c`` computed once per optimizer step, its gradient pushed into P and A once.

While enabled, the projected weights live in the compressed network as ordinary parameters (the
*placeholders*) that collect ∂L/∂W_c over all micro-batches (and that DDP all-reduces like any
weight); :meth:`AmortizedStep.push` then sends them through each product's VJP into P and A. The same
machinery serves the gradient-checkpointing path outside the amortised step, where each backward's
∂L/∂W_c goes on into P and A as soon as it has accumulated, and the FSDP2 variant, where each unit
gathers its shards to build its ``W_c`` and FSDP reduce-scatters the pushed gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..ranks import world_size
from .layer import Projection


class AmortizedStep:
    """The state of one optimizer step's ``W_c`` for a :class:`~hf_projcomp.ProjCompModel`.

    Args:
        projections: one ``Projection`` per placeholder, in ``names`` order.
        names: the placeholders' parameter names in the compressed network.
        sharded: returns the FSDP2 root over the projections, or None (``shard()`` sets it later).
        norms: the replicated trainable parameters whose gradients are averaged over ranks when sharded.
    """

    def __init__(
        self,
        projections: Iterable[Projection],
        names: list[str],
        sharded: Callable[[], Any],
        norms: Callable[[], Iterable[nn.Parameter]],
    ) -> None:
        self.projections = list(projections)
        self.names = names
        self.sharded = sharded
        self.norms = norms
        self.enabled = False
        self.push_after_backward = False
        self.placeholders: dict[str, nn.Parameter] = {}
        # This step's (projection, placeholder, VJP) per W_c; under FSDP2 (name, placeholder, W_c with its graph).
        self.vjps: list[tuple[Any, nn.Parameter, Any]] = []

    def adopt(self, placeholders: dict[str, nn.Parameter]) -> None:
        """Take the compressed network's placeholders (again after they were replaced), each with the
        hook of the gradient-checkpointing path."""
        self.placeholders = {name: placeholders[name] for name in self.names}
        for param in {id(p): p for p in self.placeholders.values()}.values():
            param.register_post_accumulate_grad_hook(self._pushed_after_backward)
        self.vjps = []

    def set_enabled(self, enabled: bool) -> None:
        if not enabled and self.sharded() is not None:
            raise ValueError("a sharded model trains with the amortised step only")
        self.enabled = enabled
        self.push_after_backward = False
        self.vjps = []
        for param in self.placeholders.values():
            param.requires_grad_(enabled)
            param.grad = None

    def materialize(self, push_after_backward: bool = False) -> None:
        """Compute every ``W_c`` once into the placeholders, keeping each product's VJP."""
        self.vjps = []
        self.push_after_backward = push_after_backward
        sharded = self.sharded()
        if sharded is not None:
            # The units' outputs keep their graph until push (their shards are freed meanwhile).
            for name, weight in sharded().items():
                param = self.placeholders[name]
                with torch.no_grad():
                    param.copy_(weight)
                self.vjps.append((name, param, weight))
            return
        for name, proj in zip(self.names, self.projections, strict=True):
            # Reentrant checkpointing runs one backward per checkpointed layer: the VJP is then used again.
            weight, vjp = proj.forward_with_vjp(reusable=push_after_backward)
            param = self.placeholders[name]
            with torch.no_grad():
                param.copy_(weight)
            if push_after_backward:
                param.requires_grad_(True)
            self.vjps.append((proj, param, vjp))

    def _pushed_after_backward(self, param: torch.Tensor) -> None:
        # A post-accumulate-grad hook on every placeholder; acts only on the checkpointing path.
        if not self.push_after_backward or param.grad is None:
            return
        for proj, materialized, vjp in self.vjps:
            if materialized is param:
                proj.accumulate_grad(vjp(param.grad))
        param.grad = None

    def forget(self) -> None:
        """Drop ``W_c`` materialised from P and A that have changed since (a checkpoint was loaded)."""
        self.vjps = []

    def push(self) -> None:
        """Send the accumulated ∂L/∂W_c through the products into P and A; the next forward computes fresh
        ``W_c`` from the updated projections."""
        if self.sharded() is not None:
            self._push_sharded()
            return
        for proj, param, vjp in self.vjps:
            if param.grad is not None:
                proj.accumulate_grad(vjp(param.grad))
                param.grad = None
        self.vjps = []

    def _push_sharded(self) -> None:
        # A backward through each FSDP unit: it gathers its shards again and FSDP reduce-scatters the mean
        # gradient over ranks into P and A. The replicated norms are averaged here.
        pending = {
            name: (weight, param.grad)
            for name, param, weight in self.vjps
            if param.grad is not None and weight.requires_grad
        }
        # Unit by unit, last first as a backward pass runs: one backward for all of them would gather every
        # unit's shards at once (autograd starts from all the roots together).
        for unit in reversed(self.sharded().units):
            pairs = [pending[name] for name in unit.names if name in pending]
            if pairs:
                torch.autograd.backward([w for w, _ in pairs], [g.to(w.dtype) for w, g in pairs])
        for _, param, _ in self.vjps:
            param.grad = None
        self.vjps = []
        world = torch.distributed.get_world_size()
        for norm in self.norms():
            if norm.requires_grad and norm.grad is not None and not hasattr(norm.grad, "to_local"):
                torch.distributed.all_reduce(norm.grad)
                norm.grad.div_(world)


def refuse_unsynchronised_ranks() -> None:
    """The gradient-checkpointing path pushes ∂L/∂W_c into P and A outside autograd, so DDP would never
    all-reduce them: refuse under several processes instead of training a different adapter on each."""
    processes = world_size()
    if processes > 1:
        raise RuntimeError(
            f"gradient checkpointing with {processes} processes needs the amortised step, or the "
            "ranks would train different adapters: train with hf_projcomp.ProjCompTrainer, or mix "
            "hf_projcomp.ProjCompTrainerMixin into your Trainer class (class MySFT(ProjCompTrainerMixin, "
            "SFTTrainer)), or turn gradient_checkpointing off"
        )


__all__ = ["AmortizedStep", "refuse_unsynchronised_ranks"]
