"""Register projected compression with PEFT when both are imported, without importing PEFT ourselves.

``import hf_projcomp`` must stay cheap (the ``projcomp`` CLI answers ``--help`` without torch), yet
``PeftModel.from_pretrained`` after ``import hf_projcomp`` must know ``"PROJCOMP"`` adapters, whatever
was imported in between. So: if PEFT is already imported, register now; otherwise an import finder
waits for PEFT's module to *execute* and registers right after. The finder stays until then: a mere
``importlib.util.find_spec("peft")`` (transformers' ``is_peft_available()``, hence ``import trl``)
consults it without executing anything, and must not use it up.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import threading
from typing import Any


def _register() -> None:
    if "hf_projcomp.config" in sys.modules:  # that import is done or under way, and registers itself
        return
    try:
        importlib.import_module("hf_projcomp.config")
    except Exception as error:  # noqa: BLE001 - never break the import of PEFT: keep it for the first use
        from .peft_integration import failed

        failed(error)


class _AfterPeftImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the ``peft`` spec the other finders find, so that
    executing the module registers projected compression (then the finder removes itself)."""

    def __init__(self) -> None:
        self._local = threading.local()  # re-entry guard: find_spec below asks the meta path again

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "peft" or getattr(self._local, "busy", False):
            return None
        self._local.busy = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._local.busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module  # the loader object is this spec's own

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register()

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Register now if PEFT is imported, else when it is (no-op without PEFT installed)."""
    if "peft" in sys.modules:
        _register()
    elif not any(isinstance(finder, _AfterPeftImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterPeftImport())
