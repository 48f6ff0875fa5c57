"""hf_projcomp: make pretrained causal LMs smaller while keeping them standard transformers checkpoints."""

from .architectures import ARCHITECTURES
from .compact import compact_prune
from .config import ProjCompConfig
from .mapping import get_projcomp_model
from .projection import ProjCompModel
from .hard_prune import hard_prune
from .loading import load_model
from .training import ProjCompTrainer

__version__ = "0.1.0"

__all__ = ["ARCHITECTURES", "ProjCompConfig", "compact_prune", "ProjCompModel", "ProjCompTrainer", "get_projcomp_model", "hard_prune", "load_model",
           "__version__"]
