"""COMPACT: training-free vocabulary and common-token FFN pruning (arXiv 2509.06836)."""

from .budget import Split, candidate_splits, resolve_budget
from ..importance.calibration import load_calibration_texts, tokenize_calibration
from .calibration import generate_calibration_texts
from .prune import CompactResult, compact_prune

__all__ = [
    "CompactResult",
    "Split",
    "candidate_splits",
    "compact_prune",
    "generate_calibration_texts",
    "load_calibration_texts",
    "resolve_budget",
    "tokenize_calibration",
]
