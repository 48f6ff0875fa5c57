"""hf_projcomp: make pretrained causal LMs smaller while keeping them standard transformers checkpoints.

The public names load on first use (PEP 562), so ``import hf_projcomp`` and ``projcomp --help`` don't
pay for importing torch and transformers. Projected compression is registered with PEFT as soon as
both are imported (:mod:`hf_projcomp._peft_hook`), so after ``import hf_projcomp``,
``PeftModel.from_pretrained`` and ``AutoPeftModelForCausalLM`` know ``"PROJCOMP"`` adapters.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._peft_hook import install as _install_peft_hook
from ._version import __version__

_EXPORTS = {
    "ARCHITECTURES": ".architectures",
    "CompactConfig": ".compact",
    "DistillConfig": ".training",
    "ProjCompConfig": ".config",
    "ProjCompModel": ".projection",
    "ProjCompTrainer": ".training",
    "ProjCompTrainerMixin": ".training",
    "compact_prune": ".compact",
    "distill_pruned": ".training",
    "get_projcomp_model": ".mapping",
    "hard_prune": ".hard_pruning",
    "load_model": ".loading",
}

__all__ = [
    "ARCHITECTURES",
    "CompactConfig",
    "DistillConfig",
    "ProjCompConfig",
    "ProjCompModel",
    "ProjCompTrainer",
    "ProjCompTrainerMixin",
    "__version__",
    "compact_prune",
    "distill_pruned",
    "get_projcomp_model",
    "hard_prune",
    "load_model",
]

if TYPE_CHECKING:
    from .architectures import ARCHITECTURES
    from .compact import CompactConfig, compact_prune
    from .config import ProjCompConfig
    from .hard_pruning import hard_prune
    from .loading import load_model
    from .mapping import get_projcomp_model
    from .projection import ProjCompModel
    from .training import DistillConfig, ProjCompTrainer, ProjCompTrainerMixin, distill_pruned


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hf_projcomp' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


_install_peft_hook()
