"""Deprecated location of :mod:`hf_projcomp.ranks` (kept for one release)."""

from ..ranks import check_same_on_all_ranks, close_process_group, on_rank0_then_broadcast, world_size

__all__ = ["check_same_on_all_ranks", "close_process_group", "on_rank0_then_broadcast", "world_size"]
