"""Training with ``transformers.Trainer``: projections (the amortised step), distillation from the
frozen base, and recovery of a hard-pruned model (:func:`distill_pruned`)."""

from .distill import DistillationMixin, DistillationTrainer, DistillConfig, Teacher, distill_pruned, distillation_kl
from .trainer import ProjCompTrainer, ProjCompTrainerMixin

__all__ = [
    "DistillConfig",
    "DistillationMixin",
    "DistillationTrainer",
    "ProjCompTrainer",
    "ProjCompTrainerMixin",
    "Teacher",
    "distill_pruned",
    "distillation_kl",
]
