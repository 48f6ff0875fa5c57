"""COMPACT: training-free vocabulary and common-token FFN pruning (arXiv 2509.06836).

``compact_select`` (a :class:`CompactConfig` → a :class:`CompactSelection`: kept token ids, d_ff
channels, refitted down_proj values, pruned tokenizer) and ``compact_build`` (the hard-pruned
vanilla model); ``compact_prune`` runs both.
"""

from ..importance.calibration import tokenize_calibration
from .budget import Split, candidate_splits, resolve_budget
from .build import compact_build
from .calibration import generate_calibration_texts
from .config import CompactConfig
from .prune import CompactResult, compact_prune
from .select import CompactSelection, compact_select

__all__ = [
    "CompactConfig",
    "CompactResult",
    "CompactSelection",
    "Split",
    "candidate_splits",
    "compact_build",
    "compact_prune",
    "compact_select",
    "generate_calibration_texts",
    "resolve_budget",
    "tokenize_calibration",
]
