"""Training projections with ``transformers.Trainer``: the amortised step and distillation."""

from .distill import Teacher, distillation_kl
from .trainer import ProjCompTrainer

__all__ = ["ProjCompTrainer", "Teacher", "distillation_kl"]
