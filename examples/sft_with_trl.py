"""Projected compression trained with TRL's SFTTrainer: a ProjCompConfig as its ``peft_config``.

    python examples/sft_with_trl.py --model_name_or_path Qwen/Qwen2.5-0.5B --train_file chats.jsonl \
        --hidden_size 640 --intermediate_size 2432 --output_dir out/sft-pc --max_steps 500

With no ``--model_name_or_path`` it compresses the offline Gemma-3-270M of the ``demo`` extra; with no
``--train_file`` it trains on the WikiText-2 excerpt bundled with hf_projcomp. A ``.jsonl``/``.json``
file may hold any dataset format TRL reads (``text``, ``messages``, ``prompt``/``completion``); a
``.txt`` file is one training example per non-empty line.

The trainer is ``SFTTrainer`` with :class:`hf_projcomp.ProjCompTrainerMixin` mixed in, so every
``W_c = P_out · W · P_in + A`` is computed once per optimizer step (a plain ``SFTTrainer`` also
trains it correctly, computing the products in every micro-batch). TRL's own defaults apply
(bf16 autocast where supported, gradient checkpointing). Writes the adapter to ``--output_dir`` (reload
with ``peft.PeftModel.from_pretrained``) and the merged vanilla model to ``<output_dir>/merged``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from datasets import Dataset, load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from hf_projcomp import ProjCompConfig, ProjCompTrainerMixin


class ProjCompSFTTrainer(ProjCompTrainerMixin, SFTTrainer):
    """TRL's SFTTrainer with the once-per-step projection (the mixin comes first)."""


def load_train_data(path: str | None) -> Dataset:
    if path is None:
        from hf_projcomp.texts import CALIBRATION, bundled_text

        path = str(bundled_text(CALIBRATION, path=True))
    if Path(path).suffix in (".jsonl", ".json"):
        return load_dataset("json", data_files=path, split="train")
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return Dataset.from_dict({"text": [line for line in lines if line]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", help="Hub id or directory (default: the demo Gemma-3-270M)")
    parser.add_argument("--train_file", help=".txt (one example per line), .jsonl or .json (default: bundled text)")
    parser.add_argument("--hidden_size", type=int, default=512)
    parser.add_argument("--intermediate_size", type=int, default=1024)
    parser.add_argument("--importance", default="activation", choices=("magnitude", "activation", "compact"))
    parser.add_argument("--output_dir", default="sft-projcomp")
    parser.add_argument("--max_steps", type=int, default=50)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--use_cpu", action="store_true")
    args = parser.parse_args()

    if args.model_name_or_path is None:
        from hf_projcomp.demo import demo_model_path

        args.model_name_or_path = demo_model_path()  # converted from the GGUF once, then a model directory
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    config = ProjCompConfig(
        hidden_size=args.hidden_size, intermediate_size=args.intermediate_size, importance=args.importance
    )
    training = SFTConfig(
        args.output_dir,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        max_length=args.max_length,
        use_cpu=args.use_cpu,
        report_to=[],
        logging_steps=10,
        save_strategy="no",
    )
    trainer = ProjCompSFTTrainer(
        model=model,
        peft_config=config,
        args=training,
        train_dataset=load_train_data(args.train_file),
        processing_class=tokenizer,
    )
    trainer.model.print_trainable_parameters()
    trainer.train()
    trainer.save_model()  # the adapter (and the pruned tokenizer, if the vocabulary shrank)
    merged_dir = trainer.model.save_merged(Path(args.output_dir) / "merged", tokenizer=tokenizer)
    print(f"adapter in {args.output_dir}, merged vanilla model in {merged_dir}")


if __name__ == "__main__":
    main()
