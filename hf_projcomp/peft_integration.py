"""Projected compression registered with PEFT, whose method types are a closed enum.

PEFT looks a method up by its ``peft_type`` string in a few tables (config class, tuner class, state
dict prefix); adding ``"PROJCOMP"`` to them is enough for ``get_peft_model``, ``PeftConfig`` /
``PeftModel.from_pretrained``, ``AutoPeftModelForCausalLM`` and ``save_pretrained``. That relies on
PEFT internals, so the supported PEFT versions are a tested range, and a PEFT whose tables moved
fails here with a message instead of breaking later.
"""

from __future__ import annotations

from importlib.metadata import version

from packaging.version import Version

# Tested in CI at both ends (see .ci/run); keep in step with pyproject.toml.
PEFT_MIN, PEFT_BELOW = Version("0.21.0"), Version("0.22.0")
_TABLES = ("PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING", "PEFT_TYPE_TO_PREFIX_MAPPING")


def register(config_cls: type, tuner_cls: type, peft_type: str) -> None:
    """Add ``peft_type`` to PEFT's tables (idempotent); ``ImportError`` on a PEFT it was not made for."""
    installed = Version(version("peft"))
    if not PEFT_MIN <= installed < PEFT_BELOW:
        raise ImportError(
            f"hf_projcomp registers itself in PEFT {PEFT_MIN} to <{PEFT_BELOW}, but peft {installed} is installed: "
            f"pip install 'peft>={PEFT_MIN},<{PEFT_BELOW}'"
        )
    import peft.mapping as mapping

    missing = [name for name in _TABLES if not isinstance(getattr(mapping, name, None), dict)]
    if missing:
        raise ImportError(f"peft {installed} lacks {missing}: hf_projcomp cannot register projected compression")
    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = tuner_cls
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = tuner_cls.prefix


__all__ = ["PEFT_BELOW", "PEFT_MIN", "register"]
