"""Several processes agree on one selection: computed on rank 0 and broadcast (gloo, 2 CPU processes)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp

from hf_projcomp import ProjCompConfig, get_projcomp_model
from hf_projcomp.distributed import check_same_on_all_ranks, close_process_group
from tests.tiny import tiny_model

CONFIG = dict(hidden_size=48, intermediate_size=64, importance="activation")


def calibration(seed: int) -> list[torch.Tensor]:
    """Each rank's own data (a sharded dataloader would give each rank different batches)."""
    return [torch.randint(3, 96, (2, 16), generator=torch.Generator().manual_seed(seed))]


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        pc = get_projcomp_model(
            tiny_model("llama"), ProjCompConfig(**CONFIG), calibration_data=calibration(rank), progress=False
        )
        try:
            check_same_on_all_ranks(rank, "rank numbers")
            refused = False
        except RuntimeError:
            refused = True
        check_same_on_all_ranks(pc.selection().hidden.tolist(), "selections")
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump({**as_lists(pc), "refused": refused}, f)
    finally:
        close_process_group()


def as_lists(pc) -> dict:
    sel = pc.selection()
    return {"hidden": sel.hidden.tolist(), "ffn": [f.tolist() for f in sel.ffn]}


def selection(seed: int) -> dict:
    return as_lists(
        get_projcomp_model(
            tiny_model("llama"), ProjCompConfig(**CONFIG), calibration_data=calibration(seed), progress=False
        )
    )


@pytest.mark.usefixtures("one_thread")
def test_every_rank_gets_rank0s_selection(tmp_path):
    own0, own1 = selection(0), selection(1)
    assert own0 != own1  # the ranks' data alone would select differently
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for result in ranks:
        assert result.pop("refused") is True  # differing values are caught
        assert result == own0
