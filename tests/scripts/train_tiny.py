"""Train a tiny projected model with ProjCompTrainer and save each rank's adapter (run by tests).

    python tests/scripts/train_tiny.py OUT_DIR [--steps N] [--resume CHECKPOINT] [--save-steps K]
    accelerate launch --cpu --num_processes 2 tests/scripts/train_tiny.py OUT_DIR
    torchrun --nproc_per_node 2 tests/scripts/train_tiny.py OUT_DIR --fsdp   # FSDP2, no distillation
    torchrun --nproc_per_node 2 tests/scripts/train_tiny.py OUT_DIR --trainer plain --checkpointing \
        --find-unused false   # transformers.Trainer, gradient checkpointing, ddp_find_unused_parameters=False

Every run sees the same 8 sequences per optimizer step (one epoch per step), split over however
many processes there are, so runs with different world sizes take identical steps.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import Trainer, TrainingArguments

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from hf_projcomp import ProjCompConfig, ProjCompTrainer, get_projcomp_model
from hf_projcomp.distributed import close_process_group, full_adapter_state_dict
from hf_projcomp.projection import unwrap
from tests.tiny import tiny_model

GLOBAL_BATCH = 8
ACCUMULATION = 2


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--save-steps", type=int, default=0)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--model-type", default="llama")
    parser.add_argument("--distill", type=float, default=0.3, help="distill_alpha")
    parser.add_argument("--fsdp", action="store_true", help="TrainingArguments(fsdp=True, fsdp_config={'version': 2})")
    parser.add_argument(
        "--trainer",
        choices=("projcomp", "plain"),
        default="projcomp",
        help="ProjCompTrainer, or a plain transformers.Trainer (no distillation)",
    )
    parser.add_argument("--checkpointing", action="store_true", help="gradient_checkpointing=True")
    parser.add_argument("--find-unused", choices=("true", "false"), default=None, help="ddp_find_unused_parameters")
    args = parser.parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ids = torch.randint(3, 96, (GLOBAL_BATCH, 16), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    pc = get_projcomp_model(
        tiny_model(args.model_type),
        ProjCompConfig(hidden_size=48, intermediate_size=64, importance="magnitude"),
        progress=False,
    )
    training = TrainingArguments(
        args.out,
        per_device_train_batch_size=GLOBAL_BATCH // (world * ACCUMULATION),
        gradient_accumulation_steps=ACCUMULATION,
        max_steps=args.steps,
        learning_rate=1e-3,
        max_grad_norm=0.05,
        lr_scheduler_type="linear",
        warmup_steps=1,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        gradient_checkpointing=args.checkpointing,
        ddp_find_unused_parameters=None if args.find_unused is None else args.find_unused == "true",
        **({"fsdp": True, "fsdp_config": {"version": 2}} if args.fsdp else {}),
    )
    if args.trainer == "plain":
        trainer = Trainer(model=pc, args=training, train_dataset=data)
    else:
        trainer = ProjCompTrainer(model=pc, args=training, train_dataset=data, distill_alpha=args.distill)
    trainer.train(resume_from_checkpoint=args.resume)
    rank = int(os.environ.get("RANK", "0"))
    # Sharded, each rank holds its shards: the full tensors are gathered (every rank takes part).
    state = full_adapter_state_dict(pc) if unwrap(pc).sharded_projections is not None else pc.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(args.out, f"rank{rank}.safetensors"))
    del trainer
    close_process_group()  # as the training script does: no gloo teardown abort or hang at exit
    return pc


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
