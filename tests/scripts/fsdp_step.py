"""Three amortised steps of a tiny Llama, one process (unsharded) or several under torchrun (FSDP2).

``python fsdp_step.py OUT`` or ``torchrun --nproc_per_node 2 fsdp_step.py OUT``: the same global batch
either way (each rank takes its share of every micro-batch). Writes ``OUT/adapter.safetensors`` (every
adapter tensor, full), ``OUT/logits.safetensors`` (the trained model's logits on a fixed input) and,
sharded, ``OUT/adapter/`` through ``save_sharded``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hf_projcomp import ProjCompConfig, get_projcomp_model
from hf_projcomp.distributed import (
    clip_grad_norm_,
    close_process_group,
    full_adapter_state_dict,
    save_sharded,
    shard,
)
from hf_projcomp.projection import unwrap
from tests.tiny import tiny_model

STEPS, MICRO, GLOBAL_MICRO_BATCH = 3, 2, 4


def main(out: Path) -> None:
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    torch.set_num_threads(1)
    model = get_projcomp_model(
        tiny_model("llama"),
        ProjCompConfig(hidden_size=48, intermediate_size=64, importance="magnitude"),
        progress=False,
    )
    pc = unwrap(model)
    if distributed:
        shard(model)
    else:
        pc.set_amortized(True)
    pc.train()
    optimizer = torch.optim.AdamW(pc.trainable_parameters(), lr=1e-2, weight_decay=0.0)
    data = torch.randint(3, 96, (STEPS, MICRO, GLOBAL_MICRO_BATCH, 16), generator=torch.Generator().manual_seed(0))
    share = GLOBAL_MICRO_BATCH // world
    norms = []
    for step in range(STEPS):
        for micro in range(MICRO):
            ids = data[step, micro, rank * share : (rank + 1) * share]
            (model(input_ids=ids, labels=ids).loss / MICRO).backward()
        pc.push_gradients()
        norms.append(clip_grad_norm_(model, 0.05).item())
        optimizer.step()
        optimizer.zero_grad()
    state = full_adapter_state_dict(model)
    pc.eval()
    with torch.no_grad():  # every rank takes part: the units gather their shards
        logits = model(input_ids=data[0, 0, :2]).logits
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, out / "adapter.safetensors")
        save_file({"logits": logits, "input_ids": data[0, 0, :2].contiguous()}, out / "logits.safetensors")
        (out / "grad_norms.txt").write_text(" ".join(f"{n:.6f}" for n in norms))
    if distributed:
        save_sharded(model, str(out / "adapter"))
        close_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
