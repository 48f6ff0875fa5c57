"""Several processes, one selection: what every rank of a distributed run must agree on."""

from __future__ import annotations

import gc
import hashlib
import pickle
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def world_size() -> int:
    """Processes in the default process group (1 when torch.distributed is not initialised)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def on_rank0_then_broadcast(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0 only, its result sent to every rank (picklable results only).

    Importance and selection depend on data order and floating-point sums: computed on every rank
    they may differ, and ranks that train different selections average gradients of unrelated
    weights. Computing once also spares the other ranks the calibration pass. An exception on rank 0
    reaches the other ranks as a ``RuntimeError`` instead of leaving them waiting.
    """
    if world_size() == 1:
        return compute()
    dist = torch.distributed
    payload: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            payload[0] = ("ok", compute())
        except Exception as err:
            payload[0] = ("error", f"{type(err).__name__}: {err}")
            dist.broadcast_object_list(payload, src=0)
            raise
    dist.broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status == "error":
        raise RuntimeError(f"rank 0 failed computing the selection: {value}")
    return value


def check_same_on_all_ranks(value: Any, what: str) -> None:
    """``RuntimeError`` naming ``what`` unless every rank holds an identical ``value``."""
    if world_size() == 1:
        return
    digest = hashlib.sha256(pickle.dumps(value)).hexdigest()
    digests: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(
            f"ranks hold different {what}: build the model once per rank from the same adapter, or call "
            "get_projcomp_model after the process group is initialised (it then computes on rank 0 and broadcasts)"
        )


def close_process_group() -> None:
    """Leave torch.distributed cleanly at the end of a script (no-op when it is not initialised).

    A gloo worker thread releases a finished collective's tensors under the GIL; if the process group
    is destroyed meanwhile (at exit, when DDP's reducer dies), the main thread waits for that worker
    while holding the GIL, and the rank hangs forever (seen once in 8 runs of a 2-process CPU job).
    So: a barrier, a moment with the GIL released for the workers to finish, objects released while
    the group is alive, then the group destroyed.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    time.sleep(0.2)
    gc.collect()
    dist.destroy_process_group()


__all__ = ["check_same_on_all_ranks", "close_process_group", "on_rank0_then_broadcast", "world_size"]
