"""Importance sources that rank d_model and d_ff dimensions and pick the initial selections."""

from .activation import ActivationStatistics, activation_importance, activation_statistics
from .calibration import calibration_batches, iter_calibration_texts, tokenize_calibration
from .magnitude import magnitude_importance
from .scores import Scores, select_indices, top_k

__all__ = [
    "ActivationStatistics",
    "Scores",
    "activation_importance",
    "activation_statistics",
    "calibration_batches",
    "iter_calibration_texts",
    "magnitude_importance",
    "select_indices",
    "tokenize_calibration",
    "top_k",
]
