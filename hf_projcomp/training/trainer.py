"""The amortised projected-compression step for any ``transformers.Trainer`` (TRL's included).

A plain ``Trainer`` already trains a projected-compression model correctly: every micro-batch
computes every ``W_c = P_out · W · P_in + A`` with autograd. :class:`ProjCompTrainerMixin` makes the
projection cost once per optimizer step instead:

1. the first forward of a step computes every ``W_c`` once, outside autograd, into the compressed
   model's weights (:meth:`ProjCompModel.materialize`);
2. every micro-batch runs the small model only; backward accumulates ∂L/∂W_c in those weights
   (under DDP they are ordinary parameters, so they are all-reduced at the step's last micro-batch);
3. before clipping, the accumulated ∂L/∂W_c goes through the products into P and A once
   (:meth:`ProjCompModel.push_gradients`); clipping covers P, A and norms (global norm), then the
   optimizer steps.

Under FSDP2 (``fsdp_version: 2`` in the accelerate config or the ``TrainingArguments``) the model is
sharded by :func:`hf_projcomp.distributed.shard`, one unit per decoder layer, and the step keeps its
meaning: each unit builds its ``W_c`` once per step as it gathers its shards, and step 3 reduce-scatters
the gradients of P and A (:mod:`hf_projcomp.training.sharded`).

It also gives P its own learning rate and the norms no weight decay, and checks that every rank holds
the same selections. Mix it in before the Trainer class: ``class MySFT(ProjCompTrainerMixin,
SFTTrainer)``. :class:`ProjCompTrainer` is the ready class (with distillation from the frozen base).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from transformers import Trainer

from ..distributed import check_same_on_all_ranks
from ..distributed import fsdp as sharding
from ..projection import ProjCompModel, Projection
from ..projection.model import unwrap
from .distill import DistillationMixin, Teacher
from .sharded import ShardedModule, inner_optimizer, requested_fsdp_version, without_accelerate_fsdp

TRAINING_ARGS_NAME = "training_args.bin"
OPTIMIZER_NAME = "optimizer.pt"  # the Trainer's checkpoint file names
SCHEDULER_NAME = "scheduler.pt"
# P's learning rate as a fraction of A's. Chosen on dev text: docs/decisions.md#projection-lr-ratio
DEFAULT_PROJECTION_LR_RATIO = 0.01

if TYPE_CHECKING:
    _TrainerBase = Trainer  # the mixin's attributes and super() calls are the Trainer's
else:
    _TrainerBase = object


class ProjCompTrainerMixin(_TrainerBase):
    """The amortised step (module docstring) for a ``Trainer`` subclass; the model may be given built
    (a projected-compression ``PeftModel``) or built by the Trainer (TRL's ``peft_config=``).

    Args:
        projection_learning_rate: learning rate of P (every ``p_in``/``p_out``, or their factors U and V
            with ``ProjCompConfig.projection_rank``). A and the norms use
            ``args.learning_rate``: with P frozen, A's update is exactly that of retraining the small
            weight. One element of P moves a whole row or column of ``W_c``, so P wants a much smaller
            step; the default is ``args.learning_rate * DEFAULT_PROJECTION_LR_RATIO`` (0.01, chosen
            on dev text: ``docs/decisions.md#projection-lr-ratio``).
        amortize: compute ``W_c`` once per optimizer step (True) or per micro-batch with autograd
            (False, what a plain ``Trainer`` does). A sharded model trains with the amortised step only.
    """

    model: nn.Module  # the Trainer's model, set in its __init__ (given, or built there by model_init)

    def __init__(
        self, *args: Any, projection_learning_rate: float | None = None, amortize: bool = True, **kwargs: Any
    ) -> None:
        if projection_learning_rate is not None and projection_learning_rate <= 0:
            raise ValueError(f"projection_learning_rate must be > 0 or None, got {projection_learning_rate}")
        self.projection_learning_rate = projection_learning_rate
        self.amortize = amortize
        super().__init__(*args, **kwargs)
        self.pc = unwrap(self.model)
        # DDP wraps the model when training starts, after this: it sees the materialised W_c as parameters.
        if self.pc.sharded_projections is None:
            self.pc.set_amortized(amortize)
        selection = self.pc.selection()
        check_same_on_all_ranks(
            (
                selection.hidden.tolist(),
                [f.tolist() for f in selection.ffn],
                None if selection.vocab is None else selection.vocab.tolist(),
            ),
            "selections",
        )
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            raise ValueError(
                "ProjCompTrainer supports one process, DDP (accelerate launch --multi_gpu) and FSDP2 "
                "(fsdp_version: 2); DeepSpeed is not supported: remove it from the TrainingArguments or the "
                "accelerate config (see the README's 'Scaling out')"
            )

    # -- FSDP2 -----------------------------------------------------------------------------------
    def create_accelerator_and_postprocess(self) -> None:
        """With FSDP2 asked for (or a model already sharded), shard the model with
        :func:`hf_projcomp.distributed.shard` and create the accelerator without its FSDP plugin
        (:mod:`hf_projcomp.training.sharded` says why)."""
        version = requested_fsdp_version(self.args)
        if version is None and not _sharded(self.model):
            super().create_accelerator_and_postprocess()
            return
        pc = unwrap(self.model)
        if version not in (None, 2):
            raise ValueError(f"fsdp_version must be 2 for ProjCompTrainer (FSDP2, fully_shard), got {version}")
        if not self.amortize:
            raise ValueError("amortize must be True under FSDP2: the sharded model trains with the amortised step only")
        if getattr(self, "teacher", None) is not None:
            raise ValueError("distill_alpha must be 0 under FSDP2: the teacher would need the whole base on every rank")
        with without_accelerate_fsdp(self.args):
            super().create_accelerator_and_postprocess()
        if pc.sharded_projections is None:
            sharding.shard(self.model)

    def _move_model_to_device(self, model: Any, device: Any) -> None:
        if not _sharded(model):  # shard() placed the shards and the rest on the mesh's device
            super()._move_model_to_device(model, device)

    def _wrap_model(self, model: Any, training: bool = True, *args: Any, **kwargs: Any) -> Any:
        if not training or self.pc.sharded_projections is None:
            return super()._wrap_model(model, training, *args, **kwargs)
        if isinstance(model, ShardedModule):
            return model
        # Autocast and compilation as configured; no DDP (hence the wrapper: the Trainer then prepares the
        # optimizer alone).
        return self.accelerator.prepare_model(ShardedModule(model), device_placement=False, evaluation_mode=True)

    # -- optimizer -------------------------------------------------------------------------------
    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            # transformers annotates the model PreTrainedModel; it only hands it to optimizers that walk its
            # modules (GaLore, LOMO), which any nn.Module allows.
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.pc)  # type: ignore[arg-type]
            self.optimizer = optimizer_cls(self.parameter_groups(), **optimizer_kwargs)
        return self.optimizer

    def parameter_groups(self) -> list[dict[str, Any]]:
        """A (weight decay), P (its own LR) and the norms (no weight decay); A's group first, as the
        Trainer logs the first group's learning rate and that is the one ``args.learning_rate`` sets."""
        modules = cast("list[Projection]", list(self.pc.projections.values()))
        # P: dense p_in/p_out, or the factors U and V of a low-rank P (ProjCompConfig.projection_rank).
        projections = [p for m in modules for p in m.projection_parameters() if p.requires_grad]
        corrections = [m.a for m in modules if m.a.requires_grad]
        in_projections = {id(p) for m in modules for p in m.parameters()}
        norms = [p for p in self.pc.trainable_parameters() if id(p) not in in_projections]
        lr = self.projection_learning_rate or self.args.learning_rate * DEFAULT_PROJECTION_LR_RATIO
        return [
            {"params": corrections, "weight_decay": self.args.weight_decay},
            {"params": projections, "weight_decay": self.args.weight_decay, "lr": lr},
            {"params": norms, "weight_decay": 0.0},
        ]

    # -- the step --------------------------------------------------------------------------------
    def _clip_grad_norm(self, model: Any) -> torch.Tensor:
        # Called once per optimizer step, after the last micro-batch's backward (and DDP's all-reduce).
        self.pc.push_gradients()
        return self._clip(self.args.max_grad_norm)

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        self.pc.push_gradients()  # a no-op when clipping already pushed
        if grad_norm is None:
            grad_norm = self._clip(float("inf"))
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def _clip(self, max_norm: float) -> torch.Tensor:
        """Clip the global gradient norm over P, A and the norms; returns the norm before clipping."""
        if self.pc.sharded_projections is not None:
            return sharding.clip_grad_norm_(self.pc, max_norm)
        return self.accelerator.clip_grad_norm_(self.pc.trainable_parameters(), max_norm)

    # -- checkpoints -----------------------------------------------------------------------------
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        _check_checkpoint_selections(self.pc, resume_from_checkpoint)
        if self.pc.sharded_projections is not None:
            self._load_sharded_adapter(resume_from_checkpoint)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.pc.forget_materialized()

    def _load_best_model(self) -> None:
        if self.pc.sharded_projections is not None:
            best = self.state.best_model_checkpoint
            assert best is not None  # the Trainer loads the best model only once it has one
            self._load_sharded_adapter(best)
        else:
            super()._load_best_model()
        self.pc.forget_materialized()

    def _load_sharded_adapter(self, checkpoint: str) -> None:
        from safetensors.torch import load_file

        from ..config import WEIGHTS_NAME

        sharding.load_full_adapter_state_dict(self.model, load_file(os.path.join(checkpoint, WEIGHTS_NAME)))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """As ``Trainer.save_model``; a sharded model's adapter is gathered on every rank (call it on all
        of them, as the Trainer does) and the main process writes it."""
        if self.pc.sharded_projections is None:
            super().save_model(output_dir, _internal_call)
            return
        state = sharding.full_adapter_state_dict(self.model)
        if self.args.should_save:
            self._save(output_dir, state_dict=state)
        torch.distributed.barrier()
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save")

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self.pc.sharded_projections is None:
            super()._save_optimizer_and_scheduler(output_dir)
            return
        # Full tensors keyed by parameter name: the checkpoint resumes on any number of ranks.
        state = sharding.full_optimizer_state_dict(self.model, inner_optimizer(self.optimizer))
        if self.args.should_save:
            assert self.lr_scheduler is not None  # created with the optimizer, before any checkpoint
            torch.save(state, os.path.join(output_dir, OPTIMIZER_NAME))
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None or self.pc.sharded_projections is None:
            super()._load_optimizer_and_scheduler(checkpoint)
            return
        state = torch.load(os.path.join(checkpoint, OPTIMIZER_NAME), map_location="cpu", weights_only=True)
        sharding.load_full_optimizer_state_dict(self.model, inner_optimizer(self.optimizer), state)
        assert self.lr_scheduler is not None  # created with the optimizer, before a checkpoint is loaded
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, SCHEDULER_NAME), weights_only=True))


class ProjCompTrainer(ProjCompTrainerMixin, DistillationMixin, Trainer):
    """``Trainer`` for a projected-compression model (all other arguments as ``transformers.Trainer``):
    the amortised step (:class:`ProjCompTrainerMixin`), distillation from the frozen base, and a hard
    stop on a non-finite loss.

    Args:
        distill_alpha: weight α of distillation: loss = (1-α)·CE + α·T²·KL(teacher ‖ student), the
            teacher being the frozen base model. 0 disables it (no teacher forward).
        distill_temperature: T.
        projection_learning_rate, amortize: see :class:`ProjCompTrainerMixin`.
    """

    def __init__(
        self, model: Any, *args: Any, distill_alpha: float = 0.0, distill_temperature: float = 1.0, **kwargs: Any
    ) -> None:
        pc = unwrap(model)
        vocab = None if pc.selection_vocab is None else pc.selection_vocab.tolist()
        self.init_distillation(
            Teacher(pc.model, vocab) if distill_alpha > 0 else None, distill_alpha, distill_temperature
        )
        super().__init__(model, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The adapter (PEFT's files, and the pruned tokenizer if any); the tokenizer given as
        ``processing_class`` only when the vocabulary was not pruned, so it never overwrites that one."""
        # TrainingArguments fills in output_dir (its annotation is the constructor argument's, Optional).
        output_dir = output_dir if output_dir is not None else cast(str, self.args.output_dir)
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir, state_dict=state_dict)
        if self.processing_class is not None and self.pc.tokenizer is None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))


def _sharded(model: Any) -> bool:
    """Is ``model`` a projected-compression model sharded by ``hf_projcomp.distributed.shard``? (False for
    any other model: the Trainer's own checks name what is wrong with it.)"""
    try:
        return unwrap(model).sharded_projections is not None
    except TypeError:
        return False


def _check_checkpoint_selections(pc: ProjCompModel, checkpoint: str) -> None:
    """``ValueError`` when a checkpoint was trained with other selections than ``pc`` holds."""
    from safetensors import safe_open

    from ..config import WEIGHTS_NAME

    path = os.path.join(checkpoint, WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise ValueError(f"{checkpoint} is not a projected-compression checkpoint (no {WEIGHTS_NAME})")
    with safe_open(path, framework="pt") as f:
        names = set(f.keys())
        for name, own in (
            ("selection_hidden", pc.selection_hidden),
            ("selection_ffn", pc.selection_ffn),
            ("selection_vocab", pc.selection_vocab),
        ):
            key = f"base_model.{name}"
            saved = f.get_tensor(key) if key in names else None
            if (saved is None) != (own is None) or (
                saved is not None and own is not None and not torch.equal(saved, own.cpu())
            ):
                raise ValueError(f"checkpoint {checkpoint} was trained with other selections ({name} differs)")
