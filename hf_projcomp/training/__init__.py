"""Training projections with ``transformers.Trainer``: the amortised step and distillation."""

from .distill import DistillationMixin, Teacher, distillation_kl
from .trainer import ProjCompTrainer, ProjCompTrainerMixin

__all__ = ["DistillationMixin", "ProjCompTrainer", "ProjCompTrainerMixin", "Teacher", "distillation_kl"]
