"""Several processes: FSDP2 sharding of a projected-compression model (``fsdp``), and the rank helpers of
:mod:`hf_projcomp.ranks` (one selection for every rank)."""

from ..ranks import check_same_on_all_ranks, close_process_group, on_rank0_then_broadcast, world_size
from .fsdp import (
    clip_grad_norm_,
    full_adapter_state_dict,
    full_optimizer_state_dict,
    load_full_adapter_state_dict,
    load_full_optimizer_state_dict,
    save_sharded,
    shard,
)

__all__ = [
    "check_same_on_all_ranks",
    "clip_grad_norm_",
    "close_process_group",
    "full_adapter_state_dict",
    "full_optimizer_state_dict",
    "load_full_adapter_state_dict",
    "load_full_optimizer_state_dict",
    "on_rank0_then_broadcast",
    "save_sharded",
    "shard",
    "world_size",
]
