"""Projected compression registered with PEFT, which looks a method up by its ``peft_type`` string.

PEFT's public ``register_peft_method`` only accepts names of its closed ``PeftType`` enum, so it is
tried first (a PEFT that opens it is used as intended) and PEFT's three method tables (config class,
tuner class, state-dict prefix) are written directly otherwise, after the same collision checks.

PEFT writes an adapter file by file into the target folder, so a save killed half-way leaves a folder
that mixes old and new (or a huge ``.tmp`` file): registering also routes ``PeftModel.save_pretrained``
of *this* method's adapters (Trainer checkpoints and ``save_sharded`` call it too) through
:func:`hf_projcomp.io.atomic_directory`, with the pruned tokenizer of a vocabulary-pruning adapter beside
its files, and ``PeftModel.load_adapter`` reads that tokenizer back; every other method's save and load
run exactly as PEFT wrote them.

Registering runs inside ``import peft`` (see :mod:`hf_projcomp._peft_hook`), so it never raises: a
failure is kept and raised by :func:`require_registered` where projected compression is used, and a
PEFT outside the tested range is registered anyway, with one warning.
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from importlib.metadata import version
from typing import Any, Protocol

from packaging.version import Version

# The oldest PEFT with the tuner hooks this method needs (``_get_adapter_state_dict`` and friends:
# before 0.21 PEFT refuses to save a type outside its enum), and the newest tested. CI runs the PEFT
# tests at both (.ci/run); pyproject.toml asks for peft>=PEFT_MIN.
PEFT_MIN, PEFT_NEWEST_TESTED = Version("0.21.0"), Version("0.22.0")
PEFT_TYPE = "PROJCOMP"
_TABLES = ("PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING", "PEFT_TYPE_TO_PREFIX_MAPPING")
_failure: str | None = None
# What an adapter save may write (with the pruned tokenizer of a vocabulary-pruning adapter): an old
# copy of one it did not write this time must not survive it (a stale tokenizer.model beside a
# tokenizer.json of another vocabulary gives a GGUF that emits garbage).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


class Tuner(Protocol):
    """What PEFT's method tables need of a tuner class besides being one: its state-dict prefix."""

    prefix: str


def register(config_cls: type, tuner_cls: type[Tuner]) -> None:
    """Register ``tuner_cls`` (with ``config_cls``) as PEFT method ``"PROJCOMP"``; idempotent, never raises."""
    global _failure
    try:
        _warn_if_untested(Version(version("peft")))
        _register(config_cls, tuner_cls)
        _save_atomically()
        _load_companions()
        _failure = None
    except Exception as error:
        failed(error)


def failed(error: BaseException) -> None:
    """Keep why registering failed (for :func:`require_registered`) and warn once."""
    global _failure
    _failure = f"{type(error).__name__}: {error}"
    warnings.warn(f"hf_projcomp could not register projected compression with PEFT ({_failure})", stacklevel=3)


def require_registered() -> None:
    """``ImportError`` with the reason when registering failed (called where the method is used)."""
    if _failure is not None:
        raise ImportError(f"projected compression is not registered with PEFT: {_failure}")


def _warn_if_untested(installed: Version) -> None:
    if not PEFT_MIN <= installed <= PEFT_NEWEST_TESTED:
        warnings.warn(
            f"hf_projcomp is tested with peft {PEFT_MIN} to {PEFT_NEWEST_TESTED}; peft {installed} is installed. "
            "Projected compression is registered anyway: report what breaks.",
            stacklevel=3,
        )


def _register(config_cls: type, tuner_cls: type[Tuner]) -> None:
    import peft.mapping as mapping

    missing = [name for name in _TABLES if not isinstance(getattr(mapping, name, None), dict)]
    if missing:
        raise RuntimeError(f"peft {version('peft')} has no {', '.join(missing)}")
    config_table, tuner_table, prefix_table = (getattr(mapping, name) for name in _TABLES)
    if _same_class(config_table.get(PEFT_TYPE), config_cls) and _same_class(tuner_table.get(PEFT_TYPE), tuner_cls):
        _write(config_table, tuner_table, prefix_table, config_cls, tuner_cls)  # a reload: the new classes
        return
    # PEFT's own checks (register_peft_method): a unique name and a unique state-dict prefix.
    if PEFT_TYPE in config_table or PEFT_TYPE in tuner_table:
        raise KeyError(f"there is already a PEFT method called {PEFT_TYPE!r} ({config_table.get(PEFT_TYPE)})")
    taken = [key for key, prefix in prefix_table.items() if prefix == tuner_cls.prefix and key != PEFT_TYPE]
    if taken:
        raise KeyError(f"PEFT method {taken[0]} already uses the state-dict prefix {tuner_cls.prefix!r}")
    if not _register_publicly(config_cls, tuner_cls):
        _write(config_table, tuner_table, prefix_table, config_cls, tuner_cls)


def _register_publicly(config_cls: type, tuner_cls: type[Tuner]) -> bool:
    """PEFT's ``register_peft_method``, where it accepts the name; False where it does not."""
    try:
        from peft.utils import register_peft_method
    except ImportError:
        return False
    try:
        register_peft_method(
            name=PEFT_TYPE.lower(), config_cls=config_cls, model_cls=tuner_cls, prefix=tuner_cls.prefix
        )
    except ValueError as error:
        if "Unknown PEFT type" in str(error):  # the closed enum
            return False
        raise
    return True


def _save_atomically() -> None:
    """Wrap ``PeftModel.save_pretrained`` once: a projected-compression adapter is written into a temporary
    folder beside the target, with the tuner's companion files (a pruned tokenizer), and published whole
    (other files of the target, such as a Trainer checkpoint's ``optimizer.pt``, are kept)."""
    from peft import PeftModel

    original = PeftModel.save_pretrained
    if getattr(original, "_projcomp_atomic", False):
        return

    @functools.wraps(original)
    def save_pretrained(self: Any, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        if getattr(self, "peft_type", None) != PEFT_TYPE or not kwargs.get("is_main_process", True):
            return original(self, os.fspath(save_directory), *args, **kwargs)
        from .io import atomic_directory

        # The adapter's embedding is P and A over the base's, never a copy of it. PEFT's default ("auto")
        # would compare vocabulary sizes with the base's config, looked up on the Hub (offline too: a warning).
        kwargs.setdefault("save_embedding_layers", False)
        prunes_vocabulary = getattr(self.base_model, "tokenizer", None) is not None
        owned = ADAPTER_FILES + (TOKENIZER_FILES if prunes_vocabulary else ())
        with atomic_directory(save_directory, keep_other_files=True, owned=owned) as tmp:
            card = os.path.join(save_directory, "README.md")
            if os.path.isfile(card):  # PEFT updates an existing model card rather than replacing it
                shutil.copy2(card, tmp / "README.md")
            original(self, os.fspath(tmp), *args, **kwargs)
            self.base_model.save_companion_files(tmp)

    save_pretrained._projcomp_atomic = True  # type: ignore[attr-defined]
    PeftModel.save_pretrained = save_pretrained  # type: ignore[method-assign]


def _load_companions() -> None:
    """Wrap ``PeftModel.load_adapter`` once (``PeftModel.from_pretrained`` and ``AutoPeftModelForCausalLM``
    load through it): after a projected-compression adapter's weights, the tuner reads its companion
    files (a pruned tokenizer) from the same place, with the same Hub arguments."""
    from peft import PeftModel

    original = PeftModel.load_adapter
    if getattr(original, "_projcomp_companions", False):
        return

    @functools.wraps(original)
    def load_adapter(self: Any, model_id: str | os.PathLike, adapter_name: str, *args: Any, **kwargs: Any) -> Any:
        result = original(self, model_id, adapter_name, *args, **kwargs)
        if self.peft_config[adapter_name].peft_type == PEFT_TYPE:
            hub = {k: kwargs[k] for k in ("subfolder", "revision", "token", "cache_dir") if k in kwargs}
            self.base_model.load_companion_files(model_id, **hub)
        return result

    load_adapter._projcomp_companions = True  # type: ignore[attr-defined]
    PeftModel.load_adapter = load_adapter  # type: ignore[method-assign]


def _write(config_table: dict, tuner_table: dict, prefix_table: dict, config_cls: type, tuner_cls: type[Tuner]) -> None:
    config_table[PEFT_TYPE] = config_cls
    tuner_table[PEFT_TYPE] = tuner_cls
    prefix_table[PEFT_TYPE] = tuner_cls.prefix


def _same_class(registered: type | None, cls: type) -> bool:
    """The same class, or the same one imported again (``importlib.reload``)."""
    return registered is not None and (registered.__module__, registered.__qualname__) == (
        cls.__module__,
        cls.__qualname__,
    )


__all__ = ["PEFT_MIN", "PEFT_NEWEST_TESTED", "PEFT_TYPE", "failed", "register", "require_registered"]
