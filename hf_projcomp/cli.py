"""The ``projcomp`` command line: compress, train, merge, eval, push.

Every model argument takes a Hub id or a local directory and defaults to the offline Gemma-3-270M of
the ``demo`` extra; without calibration/evaluation text the base model samples its own. User mistakes
end as one ``projcomp <command>: error: ...`` line and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import torch

EXAMPLES = """examples:
  projcomp compress                                   # COMPACT, bundled Gemma-3-270M, 50% of its parameters
  projcomp compress --model Qwen/Qwen2.5-0.5B --calibration data.txt --target-params 0.6 --output qwen-small
  projcomp eval compressed-model --text test.txt --json
  projcomp train --train_file data.txt --hidden_size 512 --intermediate_size 1024 --output_dir out --max_steps 100
  projcomp merge out --output merged
  projcomp push compressed-model your-name/gemma-3-small --private
"""
# Errors that describe the user's input (a bad value, a missing or existing path): one line. Anything
# else (TypeError, other OSErrors...) is a bug or an environment failure and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
DEMO_BASE = "google/gemma-3-270m"  # what the demo extra's GGUF (Q4_K_M, dequantized) was made from


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(self.prog, message, status=2)


def fail(prog: str, message: str, status: int = 1) -> NoReturn:
    first = str(message).strip().splitlines()[0] if str(message).strip() else "failed"
    print(f"{prog}: error: {first}", file=sys.stderr)
    sys.exit(status)


def read_text(path: str | None, model: Any, tokenizer: Any, chars: int, seed: int) -> tuple[str, str]:
    """(text, its description): the file's first ``chars`` characters, or samples from ``model``."""
    from .compact import generate_calibration_texts
    from .evaluate import load_text

    if path:
        return load_text(path, max_chars=chars), f"the first {chars:,} characters of {Path(path).name}"
    text = "\n\n".join(generate_calibration_texts(model, tokenizer, num_samples=8, max_new_tokens=256, seed=seed))
    return text[:chars], "text sampled from the base model (a sanity check, not a benchmark)"


# -- compress ------------------------------------------------------------------------------------
def compress(args: argparse.Namespace) -> None:
    from .compact import compact_prune, generate_calibration_texts
    from .loading import load_model
    from .evaluate import bits_per_byte
    from .export import CompressionSummary, save_compressed

    model, tokenizer = load_model(args.model, args.gguf_file, dtype=args.dtype)
    if args.calibration:
        calibration, described = _calibration_source(args.calibration), args.calibration
    else:
        calibration = generate_calibration_texts(model, tokenizer, args.samples, args.sample_tokens, seed=args.seed)
        described = f"{len(calibration)} texts sampled from the base model (top-k 50, seed {args.seed})"
    eval_text, eval_described = (read_text(args.eval_text, model, tokenizer, args.eval_chars, 1)
                                 if args.eval_text else (None, None))
    before = bits_per_byte(model, tokenizer, eval_text) if eval_text else None
    small, small_tok, result = compact_prune(
        model, tokenizer, calibration, args.target_params, num_sequences=args.num_sequences,
        sequence_length=args.sequence_length, return_result=True,
    )
    after = bits_per_byte(small, small_tok, eval_text) if eval_text else None
    summary = CompressionSummary.from_configs(
        "compact", model.config, small.config, model.num_parameters(), small.num_parameters(),
        base_model=args.model or DEMO_BASE, calibration_data=described, calibration_tokens=result.frequency_tokens,
        settings={"target_params": args.target_params, "vocab_size": small.config.vocab_size,
                  "intermediate_size": result.split.intermediate_size, "ffn_importance": "common_act2"},
        eval_data=eval_described, bits_per_byte_before=before, bits_per_byte_after=after,
    )
    out = save_compressed(small, small_tok, args.output, summary, repo_id=args.repo_id, overwrite=args.overwrite)
    line = f"{summary.parameters_before:,} -> {summary.parameters_after:,} parameters"
    if after is not None:
        line += f", bits/byte {before:.4f} -> {after:.4f}"
    print(f"saved {out} ({line})")


def _calibration_source(path: str) -> Any:
    if Path(path).is_dir():  # a datasets.Dataset saved with save_to_disk
        from datasets import load_from_disk

        return load_from_disk(path)
    return path


# -- train / merge -------------------------------------------------------------------------------
def train(args: argparse.Namespace) -> None:
    from .training.script import main as train_main

    train_main(args.training_args)


def merge(args: argparse.Namespace) -> None:
    from .config import ProjCompConfig
    from .loading import load_model
    from .projection import ProjCompModel

    adapter = Path(args.adapter)
    recorded = ProjCompConfig.from_pretrained(adapter)
    model, tokenizer = load_model(args.model or recorded.base_model_name_or_path, args.gguf_file, dtype=args.dtype)
    pc = ProjCompModel.from_pretrained(model, adapter)
    out = pc.save_merged(args.output, tokenizer, overwrite=args.overwrite, repo_id=args.repo_id)
    merged = pc.config
    print(f"saved {out} (vanilla {merged.architectures[0] if merged.architectures else 'model'}, hidden_size "
          f"{merged.hidden_size}, intermediate_size {merged.intermediate_size}, vocab_size {merged.vocab_size})")


# -- eval ----------------------------------------------------------------------------------------
@torch.no_grad()
def forward_seconds(model: Any, vocab_size: int, tokens: int = 256, repeats: int = 3) -> float:
    ids = torch.randint(0, vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        model(input_ids=ids)
    return (time.perf_counter() - start) / repeats


def evaluate(args: argparse.Namespace) -> None:
    from .loading import load_model
    from .evaluate import evaluate_text

    model, tokenizer = load_model(args.model, dtype=args.dtype)
    base, base_tok = load_model(args.base, args.gguf_file, dtype=args.dtype)
    text, described = read_text(args.text, base, base_tok, args.chars, seed=1)
    progress = not args.json
    ours, theirs = evaluate_text(model, tokenizer, text, progress=progress), evaluate_text(base, base_tok, text, progress=progress)
    seconds, base_seconds = forward_seconds(model, len(tokenizer)), forward_seconds(base, len(base_tok))
    report = {
        "model": args.model, "base": args.base or "gemma-3-270m (demo)", "text": described,
        "parameters": model.num_parameters(), "base_parameters": base.num_parameters(),
        "bits_per_byte": ours["bits_per_byte"], "base_bits_per_byte": theirs["bits_per_byte"],
        "word_perplexity": ours["word_perplexity"], "base_word_perplexity": theirs["word_perplexity"],
        "forward_latency_ratio": seconds / base_seconds,  # same 256-token forward, side by side
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"text: {described}")
    print(f"{'':18}{'model':>14}{'base':>14}")
    print(f"{'parameters':18}{report['parameters']:>14,}{report['base_parameters']:>14,}")
    print(f"{'bits per byte':18}{report['bits_per_byte']:>14.4f}{report['base_bits_per_byte']:>14.4f}")
    print(f"{'word perplexity':18}{report['word_perplexity']:>14.2f}{report['base_word_perplexity']:>14.2f}")
    print(f"forward latency: {report['forward_latency_ratio']:.2f}x the base's (256 tokens, this machine)")


# -- push ----------------------------------------------------------------------------------------
def push(args: argparse.Namespace) -> None:
    from .export import push_to_hub

    info = push_to_hub(args.directory, args.repo_id, private=args.private, token=args.token,
                       commit_message=args.message)
    print(f"pushed {args.directory} to {getattr(info, 'commit_url', None) or args.repo_id}")


# -- parser --------------------------------------------------------------------------------------
def build_parser() -> Parser:
    parser = Parser(prog="projcomp", description="Compress causal LMs into smaller vanilla transformers checkpoints.",
                    epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    common = {"epilog": EXAMPLES, "formatter_class": argparse.RawDescriptionHelpFormatter}

    def model_args(p: argparse.ArgumentParser, flag: str = "--model") -> None:
        p.add_argument(flag, default=None, help="Hub id or local directory (default: the demo Gemma-3-270M)")
        p.add_argument("--gguf-file", default=None, help="load this GGUF file of the model")
        p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                       help="dtype to load the model in; outputs keep it (default: the checkpoint's own)")

    p = sub.add_parser("compress", help="COMPACT: training-free vocabulary + FFN pruning",
                       description="COMPACT pruning to a parameter budget; writes a verified checkpoint + model card.",
                       **common)
    model_args(p)
    p.add_argument("--calibration", help=".txt/.jsonl file or a saved datasets directory (default: base samples)")
    p.add_argument("--samples", type=int, default=16, help="self-generated calibration texts (no --calibration)")
    p.add_argument("--sample-tokens", type=int, default=256, help="tokens per self-generated text")
    p.add_argument("--target-params", type=_target, default=0.5, help="fraction of parameters or a count")
    p.add_argument("--num-sequences", type=int, default=64, help="activation-pass sequences")
    p.add_argument("--sequence-length", type=int, default=512, help="activation-pass sequence length")
    p.add_argument("--eval-text", help="report bits per byte before/after on this text file")
    p.add_argument("--eval-chars", type=int, default=20_000)
    p.add_argument("--output", default="compressed-model", help="output directory (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--repo-id", help="Hub repo id shown in the model card's usage snippet")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=compress)

    p = sub.add_parser("train", help="projected compression through the HF Trainer (HF-style arguments)",
                       add_help=False, description="All arguments go to hf_projcomp.training.script "
                       "(HfArgumentParser + TrainingArguments); `projcomp train --help` lists them.")
    p.add_argument("training_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=train)

    p = sub.add_parser("merge", help="adapter -> verified vanilla checkpoint", **common)
    p.add_argument("adapter", help="directory with adapter_config.json + adapter_model.safetensors")
    model_args(p)
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--repo-id")
    p.set_defaults(func=merge)

    p = sub.add_parser("eval", help="bits per byte, word perplexity, parameters, latency vs the base", **common)
    p.add_argument("model", help="the compressed model (directory or Hub id)")
    model_args(p, "--base")
    p.add_argument("--text", help="text file to score (default: text sampled from the base)")
    p.add_argument("--chars", type=int, default=20_000, help="characters of --text to score")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=evaluate)

    p = sub.add_parser("push", help="upload a saved model directory in one commit", **common)
    p.add_argument("directory")
    p.add_argument("repo_id")
    p.add_argument("--private", action="store_true")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    p.add_argument("--message", default="Upload compressed model (hf_projcomp)")
    p.set_defaults(func=push)
    return parser


def _target(value: str) -> float | int:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1) or a parameter count, got {value!r}") from None
    return int(number) if number > 1 else number


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv[:1] == ["train"]:  # HF-style flags belong to HfArgumentParser, not to this parser
        args = argparse.Namespace(command="train", func=train, training_args=argv[1:])
    else:
        args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        args.func(args)
    except Exception as err:
        if not is_user_error(err):
            raise
        fail(f"projcomp {args.command}", str(err))


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` reports a mistake in the user's input rather than a bug (see USER_ERRORS)."""
    from .loading import ModelLoadError  # imported lazily: torch is loaded by now, not for --help

    return isinstance(err, USER_ERRORS + (ModelLoadError,))


if __name__ == "__main__":
    main()
