"""Projected compression sharded over processes with PyTorch FSDP2: a plain loop under torchrun.

    torchrun --nproc_per_node 8 examples/train_fsdp2.py --model meta-llama/Llama-3.1-8B \
        --train_file data.txt --target_params 0.5 --steps 1000 --output_dir out/fsdp2

Every rank loads the base, the selection is computed on rank 0 and broadcast, then
:func:`hf_projcomp.distributed.shard` shards the frozen base, P and A per decoder layer (AdamW's state
follows). Each rank reads its own share of every batch; one optimizer step is ``--accumulation``
micro-batches, W_c computed once per step. The adapter is saved as an ordinary folder (tensors gathered,
rank 0 writes): ``PeftModel.from_pretrained`` loads it on any number of processes, and
``merge_and_unload()`` gives the small vanilla model. On CPU torchrun uses gloo; on GPUs nccl.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_projcomp import ProjCompConfig, get_projcomp_model
from hf_projcomp.distributed import clip_grad_norm_, close_process_group, save_sharded, shard
from hf_projcomp.projection import unwrap


def blocks(tokenizer, path: str, block_size: int) -> torch.Tensor:
    ids = tokenizer(Path(path).read_text(encoding="utf-8"), return_tensors="pt").input_ids[0]
    n = len(ids) // block_size * block_size
    if n == 0:
        raise ValueError(f"--train_file has fewer than --block_size ({block_size}) tokens")
    return ids[:n].view(-1, block_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hub id or local directory of the base model")
    parser.add_argument("--train_file", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--target_params", type=float, default=None)
    parser.add_argument("--hidden_size", type=int, default=None)
    parser.add_argument("--intermediate_size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=8, help="sequences per micro-batch, over all ranks")
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--block_size", type=int, default=512)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if args.batch_size % world:
        raise ValueError(f"--batch_size ({args.batch_size}) must be a multiple of the number of processes ({world})")
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    base = AutoModelForCausalLM.from_pretrained(args.model).to(device)
    config = ProjCompConfig(
        target_params=args.target_params, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size
    )
    model = shard(get_projcomp_model(base, config, tokenizer=tokenizer, progress=rank == 0))
    pc = unwrap(model)
    pc.train()
    optimizer = torch.optim.AdamW(pc.trainable_parameters(), lr=args.learning_rate)
    data = blocks(tokenizer, args.train_file, args.block_size)
    share = args.batch_size // world
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    cursor = 0
    for step in range(args.steps):
        for _ in range(args.accumulation):
            rows = order[torch.arange(cursor, cursor + args.batch_size) % len(data)]
            cursor += args.batch_size
            ids = data[rows[rank * share : (rank + 1) * share]].to(device)
            (model(input_ids=ids, labels=ids).loss / args.accumulation).backward()
        pc.push_gradients()
        norm = clip_grad_norm_(model, args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        if rank == 0:
            print(f"step {step + 1}/{args.steps} grad_norm {norm.item():.4f}", flush=True)
    save_sharded(model, args.output_dir)
    if rank == 0:
        print(f"adapter written to {args.output_dir}", flush=True)
    close_process_group()


if __name__ == "__main__":
    main()
