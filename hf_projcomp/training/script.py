"""Projected compression trained with the standard Hugging Face Trainer: text files in, vanilla model out.

What ``projcomp train`` and ``examples/train_projected_compression.py`` run:

    projcomp train \
        --train_file hf_projcomp/data/wikitext2_calibration.txt --target_params 0.5 --importance activation \
        --output_dir out/pc --max_steps 200 --per_device_train_batch_size 4 --gradient_accumulation_steps 8

Every ``TrainingArguments`` flag works (``--learning_rate``, ``--save_steps``, ``--resume_from_checkpoint``,
``--bf16`` ...), and ``accelerate launch`` runs it on several processes. Without
``--model_name_or_path`` the base is the offline Gemma-3-270M of the ``demo`` extra. Trainer
checkpoints hold the adapter only; the merged vanilla checkpoint (config, safetensors, tokenizer)
is written to ``<output_dir>/merged``.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
from datasets import Dataset, load_dataset
from transformers import HfArgumentParser, TrainingArguments, default_data_collator

from ..blocks import text_blocks
from ..config import ProjCompConfig
from ..distributed import close_process_group
from ..evaluate import bits_per_byte, load_text
from ..export import save_compressed
from ..loading import load_model
from ..mapping import get_projcomp_model
from ..projection.model import unwrap
from .trainer import ProjCompTrainer

logger = logging.getLogger(__name__)
_MAP_BATCH_LINES = 1000  # run_clm's (Dataset.map's default): lines concatenated before cutting


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or local directory; default: the demo extra's Gemma-3-270M."}
    )
    gguf_file: str | None = field(default=None, metadata={"help": "Load this GGUF file from model_name_or_path."})
    dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype of the frozen base and of the merged model: auto (the checkpoint's), float32, "
            "bfloat16 or float16. P and A train in float32 regardless."
        },
    )


@dataclass
class DataArguments:
    train_file: str = field(metadata={"help": "A text file (or comma-separated files) to train on."})
    eval_text_file: str | None = field(
        default=None, metadata={"help": "Report bits per byte on this text before and after (optional)."}
    )
    eval_chars: int = field(default=20_000, metadata={"help": "Characters of eval_text_file to score."})
    block_size: int = field(default=512, metadata={"help": "Tokens per training sequence."})


@dataclass
class CompressionArguments:
    target_params: float | None = field(default=None, metadata={"help": "Target size (see ProjCompConfig)."})
    hidden_size: int | None = field(default=None, metadata={"help": "Target d_model."})
    intermediate_size: int | None = field(default=None, metadata={"help": "Target d_ff."})
    importance: str = field(default="activation", metadata={"help": "magnitude, activation or compact."})
    calibration_sequences: int = field(default=32, metadata={"help": "Sequences ranking the initial selections."})
    distill_alpha: float = field(default=0.0, metadata={"help": "Weight of distillation from the frozen base."})
    distill_temperature: float = field(default=1.0, metadata={"help": "Distillation temperature."})
    projection_learning_rate: float | None = field(
        default=None, metadata={"help": "LR of P (default: learning_rate × 0.01); A and norms use learning_rate."}
    )


def token_blocks(tokenizer: Any, files: list[str], block_size: int, training: TrainingArguments) -> Dataset:
    """run_clm's recipe: the lines of the ``text`` dataset, each as the tokenizer encodes it by default,
    concatenated 1,000 lines at a time and cut into ``block_size``-token blocks, labels = inputs
    (:func:`~hf_projcomp.blocks.text_blocks`; each batch's tail shorter than a block is dropped)."""
    raw = load_dataset("text", data_files={"train": files})["train"]

    def group(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        blocks = text_blocks(tokenizer, batch["text"], block_size, add_special_tokens=True, progress=False)
        return {"input_ids": blocks, "labels": blocks}

    with training.main_process_first(desc="tokenising"):
        return raw.map(group, batched=True, batch_size=_MAP_BATCH_LINES, remove_columns=["text"])


class _Parser(HfArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, as the projcomp CLI reports mistakes
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    # DataClassType is a NewType of Any in transformers: a tuple of dataclasses, as its own examples pass, fails it.
    arguments = (ModelArguments, DataArguments, CompressionArguments, TrainingArguments)
    parser = _Parser(arguments, prog="projcomp train")  # type: ignore[arg-type]
    model_args, data_args, comp_args, training = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO if training.should_log else logging.WARNING, format="%(message)s")
    model, tokenizer = load_model(model_args.model_name_or_path, model_args.gguf_file, dtype=model_args.dtype)
    files = data_args.train_file.split(",")
    eval_text = (
        load_text(data_args.eval_text_file, max_chars=data_args.eval_chars) if data_args.eval_text_file else None
    )
    base_bpb = bits_per_byte(model, tokenizer, eval_text) if eval_text else None

    config = ProjCompConfig(
        target_params=comp_args.target_params,
        hidden_size=comp_args.hidden_size,
        intermediate_size=comp_args.intermediate_size,
        importance=comp_args.importance,
        base_model_name_or_path=model_args.model_name_or_path,
    )
    if comp_args.importance == "compact":
        calibration = files[0]  # COMPACT reads text and prunes the tokenizer
    else:
        blocks = token_blocks(tokenizer, files, data_args.block_size, training)
        n = min(comp_args.calibration_sequences, len(blocks))
        calibration = [torch.tensor(blocks[i]["input_ids"]).unsqueeze(0) for i in range(n)]
    pc = get_projcomp_model(model, config, calibration_data=calibration, tokenizer=tokenizer)
    pc.print_trainable_parameters()
    small_tokenizer = pc.tokenizer or tokenizer
    train_blocks = token_blocks(small_tokenizer, files, data_args.block_size, training)

    trainer = ProjCompTrainer(
        model=pc,
        args=training,
        train_dataset=train_blocks,
        data_collator=default_data_collator,
        processing_class=small_tokenizer,
        distill_alpha=comp_args.distill_alpha,
        distill_temperature=comp_args.distill_temperature,
        projection_learning_rate=comp_args.projection_learning_rate,
    )
    trainer.train(resume_from_checkpoint=training.resume_from_checkpoint)
    # Recorded in the adapter, so `projcomp merge` can put them on the card later.
    pc.projcomp_config.training_data = ", ".join(Path(f).name for f in files)
    pc.projcomp_config.training_tokens = (
        trainer.state.global_step
        * training.train_batch_size
        * training.gradient_accumulation_steps
        * training.world_size
        * data_args.block_size
    )
    trainer.save_model(training.output_dir)  # the final adapter

    # A sharded model (FSDP2) merges on every rank, as each unit gathers its shards; the main process writes.
    sharded = unwrap(pc).sharded_projections is not None
    small = pc.merge_and_unload() if sharded or trainer.is_world_process_zero() else None
    if small is not None and trainer.is_world_process_zero():
        summary = pc.compression_summary(
            small,
            calibration_data=Path(files[0]).name,
            eval_data=data_args.eval_text_file,
            bits_per_byte_before=base_bpb,
            bits_per_byte_after=bits_per_byte(small, small_tokenizer, eval_text) if eval_text else None,
        )
        merged_dir = save_compressed(
            small, small_tokenizer, os.path.join(training.output_dir, "merged"), summary, overwrite=True
        )
        params = f"{summary.parameters_before:,} -> {summary.parameters_after:,} parameters"
        if eval_text:
            params += f"; bits/byte {base_bpb:.4f} -> {summary.bits_per_byte_after:.4f}"
        print(f"merged vanilla {type(small).__name__} written to {merged_dir} ({params})")
    # Under `accelerate launch`, leave the process group cleanly: a gloo rank that exits with it alive
    # can abort in teardown (exit -6) or hang (see close_process_group). DDP's reducer goes first.
    del trainer
    close_process_group()


if __name__ == "__main__":
    main()
