"""Training projections with ``transformers.Trainer``: the amortised step and distillation."""

from .distill import DistillationMixin, Teacher, distillation_kl
from .trainer import ProjCompTrainer

__all__ = ["DistillationMixin", "ProjCompTrainer", "Teacher", "distillation_kl"]
