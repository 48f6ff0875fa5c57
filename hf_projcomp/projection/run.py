"""How the tuner runs: the compressed network's forward with every ``W_c`` supplied (per call through
``functional_call``, or materialised once per optimizer step by :class:`~.step.AmortizedStep`), the
base's own forward while the adapter is disabled, and ``generate``.

:class:`RunsCompressed` is mixed into :class:`~hf_projcomp.ProjCompModel`, which sets ``model`` (the
base), ``compressed``, ``projections``, ``step`` and ``selection_vocab``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.func import functional_call
from transformers import PreTrainedModel

from .patches import mirror_forward_patch
from .step import AmortizedStep, refuse_unsynchronised_ranks

if TYPE_CHECKING:
    from transformers import GenerationMixin


class RunsCompressed(nn.Module):
    """Forward, ``generate`` and the amortised step of a projected-compression tuner."""

    model: PreTrainedModel
    compressed: PreTrainedModel
    projections: nn.ModuleDict
    step: AmortizedStep
    selection_vocab: torch.Tensor | None
    adapters_disabled: bool

    @property
    def sharded_projections(self) -> nn.Module | None:
        """The FSDP2 root over P, A and the base (:func:`hf_projcomp.distributed.shard`), or None.

        Kept outside the module tree, so the adapter's state dict keeps its names."""
        return self.__dict__.get("_sharded")

    def projected_weights(self) -> dict[str, torch.Tensor]:
        """Every ``W_c`` by its parameter name in the compressed model (with autograd unless disabled)."""
        if self.sharded_projections is not None:  # FSDP2 units gather their shards
            return self.sharded_projections()
        return {name: proj() for name, proj in zip(self.step.names, self.projections.values(), strict=True)}

    # -- forward ---------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """The compressed model's forward (arguments as the base class's ``forward``); the base model's
        own while the adapter is disabled (:meth:`base_forward`)."""
        kwargs.update(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        if self.adapters_disabled:
            return self.base_forward(**kwargs)
        mirror_forward_patch(self.model, self.compressed)
        if self.step.enabled:
            self._materialize_once_per_step()
            return self.compressed(**kwargs)
        if _checkpointing(self.compressed) and self.training and torch.is_grad_enabled():
            refuse_unsynchronised_ranks()
            # Checkpointed layers recompute in backward, after functional_call would have put the placeholders
            # back. So W_c goes into the weights themselves, as in the amortised step, and every backward
            # sends its ∂L/∂W_c straight on into P and A (AmortizedStep.push_after_backward): per
            # micro-batch, as autograd through the products would.
            self.materialize(push_after_backward=True)
            return self.compressed(**kwargs)
        # Tied head and embedding share one projected tensor: functional_call writes it to both.
        return functional_call(self.compressed, self.projected_weights(), (), kwargs, tie_weights=True, strict=False)

    def base_forward(self, **kwargs: Any) -> Any:
        """The base model's own forward, on this adapter's token ids.

        With a pruned vocabulary, ``input_ids`` and ``labels`` (ids of the pruned tokenizer) are mapped to
        the base's ids first, the loss is the base's own, and the logits are the base's restricted to the
        kept tokens, so that they index like the adapter's (TRL reads reference log-probabilities so)."""
        vocab = self.selection_vocab
        if vocab is None:
            return self.model(**kwargs)
        for name in ("input_ids", "labels", "shift_labels"):
            ids = kwargs.get(name)
            if ids is not None:
                kwargs[name] = torch.where(ids >= 0, vocab[ids.clamp(min=0)], ids)
        out = self.model(**kwargs)
        if getattr(out, "logits", None) is not None:
            out.logits = out.logits.index_select(-1, vocab)
        return out

    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The compressed model's ``generate``, with every ``W_c`` computed once for the whole call (the
        base's while the adapter is disabled, when the vocabulary is the base's)."""
        if self.adapters_disabled:
            if self.selection_vocab is not None:
                raise NotImplementedError(
                    "generate() with the adapter disabled: this adapter prunes the vocabulary, so the base would "
                    "generate ids its pruned tokenizer cannot decode; generate with the base model itself "
                    "(get_base_model()) and the base's tokenizer"
                )
            return _generating(self.model).generate(*args, **kwargs)
        if self.step.enabled:
            self._materialize_once_per_step()
            return _generating(self.compressed).generate(*args, **kwargs)
        for name, weight in self.projected_weights().items():  # the placeholders take this call's W_c
            self.step.placeholders[name].copy_(weight)
        return _generating(self.compressed).generate(*args, **kwargs)

    # -- amortised optimizer step (projection/step.py) ---------------------------------------------
    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        """Read by DDP when it wraps the ``PeftModel`` (this tuner is its ``base_model``): in the amortised
        step P and A get their gradients from the all-reduced ∂L/∂W_c (:meth:`push_gradients`), never
        from autograd, so DDP must not wait for them (``find_unused_parameters=False``)."""
        if not self.step.enabled:
            return []
        return [f"base_model.projections.{name}" for name, _ in self.projections.named_parameters()]

    def set_amortized(self, enabled: bool = True) -> None:
        """Switch to computing every ``W_c`` once per optimizer step (:class:`~.step.AmortizedStep`);
        :class:`ProjCompTrainer` drives it."""
        self.step.set_enabled(enabled)

    def materialize(self, push_after_backward: bool = False) -> None:
        """Compute every ``W_c`` once into the compressed network's weights, keeping each product's VJP
        (``push_after_backward``: the gradient-checkpointing path, see :meth:`forward`)."""
        self.step.materialize(push_after_backward)

    def _materialize_once_per_step(self) -> None:
        if not self.step.vjps:  # the step's first forward; push_gradients (or a loaded checkpoint) clears them
            self.materialize()

    def forget_materialized(self) -> None:
        """Drop ``W_c`` materialised from P and A that have changed since (a checkpoint was loaded)."""
        self.step.forget()

    def push_gradients(self) -> None:
        """Send the accumulated ∂L/∂W_c through the products into P and A (once per optimizer step)."""
        self.step.push()


def _generating(model: PreTrainedModel) -> GenerationMixin:
    # transformers 5's PreTrainedModel has no generate; the causal LM classes this method takes mix it in.
    return cast("GenerationMixin", model)


def _checkpointing(model: PreTrainedModel) -> bool:
    # Later transformers 5 releases renamed is_gradient_checkpointing (deprecated) is_activation_checkpointing.
    new = hasattr(type(model), "is_activation_checkpointing")
    return bool(getattr(model, "is_activation_checkpointing" if new else "is_gradient_checkpointing"))


__all__ = ["RunsCompressed"]
