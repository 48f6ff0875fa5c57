"""Register projected compression with PEFT when both are imported, without importing PEFT ourselves.

``import hf_projcomp`` must stay cheap (the ``projcomp`` CLI answers ``--help`` without torch), yet
``PeftModel.from_pretrained`` after ``import hf_projcomp`` must know ``"PROJCOMP"`` adapters, whatever
was imported in between. So: if PEFT is already imported, register now; otherwise an import finder
waits for PEFT's module to *execute* and registers right after. The finder stays until then: a mere
``importlib.util.find_spec("peft")`` (transformers' ``is_peft_available()``, hence ``import trl``)
consults it without executing anything, and must not use it up.

Registering imports :mod:`hf_projcomp.projection.model` (which registers itself and
:class:`~hf_projcomp.ProjCompConfig`), by name: this module is a leaf of the package. When PEFT is
first imported by ``hf_projcomp.config`` itself, that module is still executing, so registering waits
for it to finish (the finder watches it too).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import threading
from typing import Any

_PEFT, _CONFIG = "peft", "hf_projcomp.config"
_REGISTRATION = "hf_projcomp.projection.model"


def _executing(name: str) -> bool:
    spec = getattr(sys.modules.get(name), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _register(executed: str = "") -> None:
    """Register once PEFT is imported and no module registering depends on is half-way through its
    import (``executed`` has just finished executing: importlib clears its flag only afterwards)."""
    if _PEFT not in sys.modules or any(_executing(n) for n in (_PEFT, _CONFIG, _REGISTRATION) if n != executed):
        return
    for finder in [f for f in sys.meta_path if isinstance(f, _AfterImport)]:
        sys.meta_path.remove(finder)
    try:
        importlib.import_module(_REGISTRATION)
    except Exception as error:
        from .peft_integration import failed

        failed(error)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the ``peft`` (and ``hf_projcomp.config``) spec that the
    other finders find, so that executing the module tries to register."""

    def __init__(self) -> None:
        self._local = threading.local()  # re-entry guard: find_spec below asks the meta path again

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in (_PEFT, _CONFIG) or getattr(self._local, "busy", False):
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
            _register(executed=name)

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Register now if PEFT is imported, else when it is (no-op without PEFT installed)."""
    if _PEFT in sys.modules:
        _register()
    elif not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
