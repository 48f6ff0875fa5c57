"""Importance sources that rank d_model and d_ff dimensions and pick the initial selections."""

from .activation import activation_importance
from .calibration import calibration_batches, iter_calibration_texts, load_calibration_texts, tokenize_calibration
from .magnitude import magnitude_importance
from .scores import Scores, select_indices, top_k

__all__ = [
    "Scores",
    "activation_importance",
    "calibration_batches",
    "iter_calibration_texts",
    "load_calibration_texts",
    "magnitude_importance",
    "select_indices",
    "tokenize_calibration",
    "top_k",
]
