"""Register projected compression with PEFT when both are imported, without importing PEFT ourselves.

``import hf_projcomp`` must stay cheap (the ``projcomp`` CLI answers ``--help`` without torch), yet
``PeftModel.from_pretrained`` after ``import hf_projcomp`` must know ``"PROJCOMP"`` adapters. So: if
PEFT is already imported, register now; otherwise wait for its import with a one-shot import hook.
Registering imports :mod:`hf_projcomp.config`, which registers at the end of its own import.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any


def _register() -> None:
    if "hf_projcomp.config" not in sys.modules:  # else that import is under way and registers itself
        importlib.import_module("hf_projcomp.config")


class _AfterPeftImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``peft`` is being imported, wraps its loader to register afterwards."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "peft":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    """Register now if PEFT is imported, else when it is (no-op without PEFT installed)."""
    if "peft" in sys.modules:
        _register()
    elif not any(isinstance(finder, _AfterPeftImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterPeftImport())
