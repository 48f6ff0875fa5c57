"""FSDP2 under the ``Trainer``: what :class:`~hf_projcomp.training.ProjCompTrainerMixin` needs to train a
model sharded by :func:`hf_projcomp.distributed.shard`.

The sharding is ours, not accelerate's: one FSDP unit per decoder layer must hold the frozen base
weights together with the P and A that read them, and compute its ``W_c`` as it gathers its shards,
which accelerate's auto-wrap policies cannot express. So the Trainer asks for FSDP2 the usual way
(``fsdp_version: 2`` in the accelerate config, or ``TrainingArguments(fsdp=True, fsdp_config={"version": 2})``),
the mixin shards the model itself, and accelerate runs plain multi-process data parallelism around it:
it must neither shard the model again nor wrap it in DDP (the units reduce their own gradients).
Checkpoints stay rank-independent: the adapter and the optimizer state are gathered to full tensors on
save (the optimizer state in the layout an unsharded run writes) and resharded on load.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

_ACCELERATE_USE_FSDP = "ACCELERATE_USE_FSDP"


def requested_fsdp_version(args: Any) -> int | None:
    """The FSDP version the ``TrainingArguments`` or the accelerate launcher asks for, or None."""
    plugin = getattr(args, "fsdp_plugin_args", None)
    if plugin:
        return int(plugin.get("fsdp_version", 1))
    if os.environ.get(_ACCELERATE_USE_FSDP, "false").lower() == "true":  # accelerate launch with an FSDP config
        return int(os.environ.get("FSDP_VERSION", "1"))
    return None


@contextmanager
def without_accelerate_fsdp(args: Any) -> Iterator[None]:
    """Create the Trainer's ``Accelerator`` without its FSDP plugin (the model is sharded already)."""
    plugin, env = getattr(args, "fsdp_plugin_args", None), os.environ.pop(_ACCELERATE_USE_FSDP, None)
    args.fsdp_plugin_args = None
    try:
        yield
    finally:
        args.fsdp_plugin_args = plugin
        if env is not None:
            os.environ[_ACCELERATE_USE_FSDP] = env


class ShardedModule(nn.Module):
    """The sharded model as the Trainer trains it. accelerate treats a module it does not know as
    already wrapped, so it neither wraps it in DDP (which refuses DTensor parameters) nor shards it
    again; the FSDP units reduce-scatter P and A's gradients and the model averages its norms'."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


def inner_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer``."""
    return getattr(optimizer, "optimizer", optimizer)
