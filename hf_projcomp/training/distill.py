"""Knowledge distillation from the frozen base model already in memory (no second copy of weights)."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call
from transformers import PreTrainedModel


class Teacher:
    """A frozen base model as teacher, scored on the student's vocabulary.

    With a pruned vocabulary (``vocab_indices``: new id -> base id) the student's token ids are
    mapped back to base ids, and only the kept rows of the base LM head are applied (gathered per
    call, not stored): the teacher's distribution is the base one renormalised over the kept tokens.
    The logits come from the base model's own forward (its softcapping, logits scaling...), with the
    gathered rows swapped in for the head.
    """

    def __init__(self, base: PreTrainedModel, vocab_indices: list[int] | None = None) -> None:
        self.base = base
        head = base.get_output_embeddings()
        self.head_name = next(name for name, module in base.named_modules() if module is head)
        self.old_ids = None if vocab_indices is None else torch.tensor(vocab_indices, dtype=torch.long)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """float32 logits (batch, seq, student vocabulary)."""
        head = self.base.get_submodule(self.head_name)
        swapped = {}
        if self.old_ids is not None:
            old_ids = self.old_ids.to(input_ids.device)
            input_ids = old_ids[input_ids]
            swapped[f"{self.head_name}.weight"] = head.weight.index_select(0, old_ids)
            if getattr(head, "bias", None) is not None:
                swapped[f"{self.head_name}.bias"] = head.bias.index_select(0, old_ids)
        # tie_weights=False: a tied input embedding keeps every base row (the ids are base ids).
        out = functional_call(
            self.base,
            swapped,
            (),
            {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False},
            tie_weights=False,
            strict=False,
        )
        return out.logits.float()


def distillation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ KL(teacher ‖ student), number of positions)`` over the positions the causal-LM loss scores
    (those whose next label is not -100), at ``temperature``."""
    mask = labels[:, 1:] != -100
    student = F.log_softmax(student_logits[:, :-1][mask].float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits[:, :-1][mask].float() / temperature, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="sum")
    return kl, mask.sum()


class DistillationMixin:
    """``Trainer.compute_loss`` with optional distillation, ``(1-α)·CE + α·T²·KL(teacher ‖ student)``,
    and a hard stop on a non-finite training loss. Mix in before ``transformers.Trainer`` and call
    :meth:`init_distillation` in ``__init__``; the teacher's forward time is logged as
    ``teacher_seconds``."""

    def init_distillation(self, teacher: Teacher | None, alpha: float, temperature: float = 1.0) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distill_alpha must lie in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"distill_temperature must be > 0, got {temperature}")
        if alpha > 0 and teacher is None:
            raise ValueError("distill_alpha > 0 needs a teacher")
        self.teacher = teacher if alpha > 0 else None
        self.distill_alpha = alpha
        self.distill_temperature = temperature
        self.teacher_seconds = 0.0

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        labels = inputs.get("labels")
        distill = self.teacher is not None and model.training and labels is not None
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if distill:
            start = time.perf_counter()
            teacher_logits = self.teacher.logits(inputs["input_ids"], inputs.get("attention_mask"))
            self.teacher_seconds += time.perf_counter() - start
            kl, positions = distillation_kl(outputs.logits, teacher_logits, labels, self.distill_temperature)
            kl = self._normalize_like_loss(kl, positions, num_items_in_batch)
            loss = (1 - self.distill_alpha) * loss + self.distill_alpha * self.distill_temperature**2 * kl
        if model.training and not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"training loss is {loss.item()} at step {self.state.global_step}: stopping. Lower the learning "
                "rate (or projection_learning_rate), enable gradient clipping (max_grad_norm), or check the data."
            )
        return (loss, outputs) if return_outputs else loss

    def _normalize_like_loss(
        self, total: torch.Tensor, count: torch.Tensor, num_items_in_batch: torch.Tensor | int | None
    ) -> torch.Tensor:
        """A summed per-token term scaled exactly as ``Trainer.compute_loss`` scales the CE loss."""
        if not (self.model_accepts_loss_kwargs and num_items_in_batch is not None):
            return total / count.clamp(min=1)
        scaled = total / num_items_in_batch
        if self.args.average_tokens_across_devices:
            scaled = scaled * (self.accelerator.num_processes // self.get_tp_size())
        return scaled

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.teacher is not None:
            logs["teacher_seconds"] = round(self.teacher_seconds, 3)
        super().log(logs, *args, **kwargs)
