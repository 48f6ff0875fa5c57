"""``ProjCompTrainer``: ``transformers.Trainer`` with the amortised projected-compression step.

A plain ``Trainer`` already trains a :class:`ProjCompModel` correctly: every micro-batch computes
every ``W_c = P_out · W · P_in + A`` with autograd. This subclass makes the projection cost once per
optimizer step instead:

1. the first forward of a step computes every ``W_c`` once, outside autograd, into the target
   model's weights (:meth:`ProjCompModel.materialize`);
2. every micro-batch runs the small model only; backward accumulates ∂L/∂W_c in those weights
   (under DDP they are ordinary parameters, so they are all-reduced at the step's last micro-batch);
3. before clipping, the accumulated ∂L/∂W_c goes through the products into P and A once
   (:meth:`ProjCompModel.push_gradients`); clipping covers P, A and norms (global norm), then the
   optimizer steps.

It also adds distillation from the frozen base, parameter groups (no weight decay on norms, own LR
for P), adapter-only checkpoints that resume exactly, and a hard stop on a non-finite loss.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import Trainer

from ..config import CONFIG_NAME, WEIGHTS_NAME, ProjCompConfig
from ..distributed import check_same_on_all_ranks
from ..projection import ProjCompModel
from ..vocab.files import save_tokenizer
from .distill import DistillationMixin, Teacher

TRAINING_ARGS_NAME = "training_args.bin"
DEFAULT_PROJECTION_LR_RATIO = 0.1


class ProjCompTrainer(DistillationMixin, Trainer):
    """``Trainer`` for a :class:`ProjCompModel` (all other arguments as ``transformers.Trainer``).

    Args:
        distill_alpha: weight α of distillation: loss = (1-α)·CE + α·T²·KL(teacher ‖ student), the
            teacher being the frozen base model. 0 disables it (no teacher forward).
        distill_temperature: T.
        projection_learning_rate: learning rate of P (every ``p_in``/``p_out``). A and the norms use
            ``args.learning_rate``: with P frozen, A's update is exactly that of retraining the small
            weight. One element of P moves a whole row or column of ``W_c``, so P wants a much smaller
            step; the default is ``args.learning_rate * DEFAULT_PROJECTION_LR_RATIO`` (on Gemma-3-270M
            at A's LR 1e-4, P's LR 1e-4 / 1e-5 / 1e-6 gave 2.17 / 2.00 / 2.02 bits per byte after 32k
            tokens: ``benchmarks/results/train_quality_lr_probe.md``).
        amortize: compute ``W_c`` once per optimizer step (True) or per micro-batch with autograd
            (False, what a plain ``Trainer`` does).
    """

    def __init__(
        self,
        model: ProjCompModel,
        *args: Any,
        distill_alpha: float = 0.0,
        distill_temperature: float = 1.0,
        projection_learning_rate: float | None = None,
        amortize: bool = True,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, ProjCompModel):
            raise TypeError(f"model must be a ProjCompModel (see get_projcomp_model), got {type(model).__name__}")
        if projection_learning_rate is not None and projection_learning_rate <= 0:
            raise ValueError(f"projection_learning_rate must be > 0 or None, got {projection_learning_rate}")
        self.pc = model
        self.projection_learning_rate = projection_learning_rate
        self.init_distillation(
            Teacher(model.base_model, model.projcomp_config.vocab_indices) if distill_alpha > 0 else None,
            distill_alpha, distill_temperature,
        )
        # Before super().__init__: DDP must see the materialised W_c as parameters when it wraps the model.
        model.set_amortized(amortize)
        super().__init__(model, *args, **kwargs)
        own = model.projcomp_config
        check_same_on_all_ranks((own.hidden_indices, own.intermediate_indices, own.vocab_indices), "selections")
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            # Sharding would split the materialised W_c and the base weights the products read.
            raise ValueError(
                "ProjCompTrainer supports single-process and DDP training (accelerate launch --multi_gpu); "
                "FSDP and DeepSpeed are not supported: remove fsdp/deepspeed from the TrainingArguments "
                "or the accelerate config"
            )

    # -- optimizer -------------------------------------------------------------------------------
    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.pc)
            self.optimizer = optimizer_cls(self.parameter_groups(), **optimizer_kwargs)
        return self.optimizer

    def parameter_groups(self) -> list[dict[str, Any]]:
        """P (its own LR), A (weight decay) and the norms (no weight decay)."""
        modules = list(self.pc.projections.values())
        projections = [p for m in modules for p in (m.p_in, m.p_out) if p is not None and p.requires_grad]
        corrections = [m.a for m in modules if m.a.requires_grad]
        in_projections = {id(p) for m in modules for p in m.parameters()}
        norms = [p for p in self.pc.trainable_parameters() if id(p) not in in_projections]
        lr = self.projection_learning_rate or self.args.learning_rate * DEFAULT_PROJECTION_LR_RATIO
        return [
            {"params": projections, "weight_decay": self.args.weight_decay, "lr": lr},
            {"params": corrections, "weight_decay": self.args.weight_decay},
            {"params": norms, "weight_decay": 0.0},
        ]

    # -- the step --------------------------------------------------------------------------------
    def _clip_grad_norm(self, model: Any) -> torch.Tensor:
        # Called once per optimizer step, after the last micro-batch's backward (and DDP's all-reduce).
        self.pc.push_gradients()
        return self.accelerator.clip_grad_norm_(self.pc.trainable_parameters(), self.args.max_grad_norm)

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        self.pc.push_gradients()  # a no-op when clipping already pushed
        if grad_norm is None:
            grad_norm = self.accelerator.clip_grad_norm_(self.pc.trainable_parameters(), float("inf"))
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    # -- checkpoints -----------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Adapter only (P, A, norms, selections; the pruned tokenizer if any), never base weights."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        self.pc.save_pretrained(output_dir)
        if self.processing_class is not None and self.pc.tokenizer is None:
            save_tokenizer(self.processing_class, output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        self._load_adapter(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self._load_adapter(self.state.best_model_checkpoint)

    def _load_adapter(self, checkpoint: str) -> None:
        weights = os.path.join(checkpoint, WEIGHTS_NAME)
        if not os.path.isfile(weights) or not os.path.isfile(os.path.join(checkpoint, CONFIG_NAME)):
            raise ValueError(f"{checkpoint} is not a ProjCompTrainer checkpoint (no {CONFIG_NAME} + {WEIGHTS_NAME})")
        saved = ProjCompConfig.from_pretrained(checkpoint)
        own = self.pc.projcomp_config
        for name in ("hidden_indices", "intermediate_indices", "vocab_indices"):
            if getattr(saved, name) != getattr(own, name):
                raise ValueError(f"checkpoint {checkpoint} was trained with other selections ({name} differs)")
        self.pc.load_state_dict(load_file(weights))
