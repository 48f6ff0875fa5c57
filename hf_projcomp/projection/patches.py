"""Carry a trainer's patch of the base model's ``forward`` over to the compressed network that runs.

``PeftModel.get_base_model()`` is the base model, so tools that patch "the model" through it patch the
base: TRL's trainers replace its ``forward`` with a fused LM-head loss (``add_fused_lm_head``), a closure
over the base's original ``forward``. The compressed network runs in the base's place, so it gets the
same patch: the function is rebuilt with the compressed network's own ``forward`` where the base's
stood in the closure (every other value, such as the logit softcapping read from the family config, is
the same for both networks).
"""

from __future__ import annotations

import inspect
import types

from torch import nn


def mirror_forward_patch(base: nn.Module, compressed: nn.Module) -> None:
    """Give ``compressed`` the instance-level ``forward`` that ``base`` has, if any and not done yet."""
    patched = base.__dict__.get("forward")
    if not inspect.ismethod(patched) or patched.__self__ is not base:
        return
    mirrored = compressed.__dict__.get("forward")
    if getattr(mirrored, "_mirrors", None) is patched.__func__:
        return
    func = patched.__func__
    paths = {id(module): name for name, module in base.named_modules()}
    cells = tuple(_rebound_cell(cell, compressed, paths) for cell in func.__closure__ or ())
    clone = types.FunctionType(func.__code__, func.__globals__, func.__name__, func.__defaults__, cells)
    clone.__kwdefaults__ = func.__kwdefaults__
    clone.__dict__.update(func.__dict__)
    clone._mirrors = func  # type: ignore[attr-defined]
    compressed.forward = types.MethodType(clone, compressed)


def _rebound_cell(cell: types.CellType, compressed: nn.Module, paths: dict[int, str]) -> types.CellType:
    """A closure cell with the compressed network's counterpart of a value bound to the base model:
    the base itself or one of its modules (``paths``: module id -> name in the base), or a method of one."""
    try:
        value = cell.cell_contents
    except ValueError:  # an empty cell
        return types.CellType()
    if inspect.ismethod(value) and id(value.__self__) in paths:
        value = types.MethodType(value.__func__, compressed.get_submodule(paths[id(value.__self__)]))
    elif isinstance(value, nn.Module) and id(value) in paths:
        value = compressed.get_submodule(paths[id(value)])
    return types.CellType(value)


__all__ = ["mirror_forward_patch"]
