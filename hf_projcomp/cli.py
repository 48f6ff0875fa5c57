"""The ``projcomp`` command line: compress, train, merge, eval, push.

Every model argument takes a Hub id or a local directory and defaults to the offline Gemma-3-270M of
the ``demo`` extra; calibration and evaluation text default to the WikiText-2 excerpts bundled with
the package (:mod:`hf_projcomp.texts`). Arguments are checked before anything heavy is imported or
loaded: a mistake ends as one ``projcomp <command>: error: ...`` line and a non-zero exit status
within a second or two. Heavy modules (torch, transformers) are imported inside the commands.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from .model_ids import DTYPES, SCHEDULERS

EXAMPLES = """examples:
  projcomp compress                                   # COMPACT, bundled Gemma-3-270M, 50% of its parameters
  projcomp compress --model Qwen/Qwen2.5-0.5B --calibration data.txt --target-params 0.6 --output qwen-small
  projcomp compress --target-params 0.4 --distill-tokens 32768  # then distil from the base (minutes on a CPU)
  projcomp compress --target-params 0.4 --num-sequences 64 --distill-tokens 131072 --distill-lr 2e-5 \
      --distill-schedule cosine
  projcomp eval compressed-model --text test.txt --json
  projcomp train --train_file data.txt --hidden_size 512 --intermediate_size 1024 --output_dir out --max_steps 100
  projcomp merge out --output merged
  projcomp push compressed-model your-name/gemma-3-small --private
"""
# Errors that describe the user's input (a bad value, a missing or existing path): one line. Anything
# else (TypeError, other OSErrors...) is a bug or an environment failure and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
# Activation sequences of `projcomp compress` by default: the most that keep the default job within a
# minute on 2 CPU cores (16 took 66 s). More sequences rank the vocabulary better on dev text, and
# any of them beats the self-sampled calibration this replaced (benchmarks/results/cli_default.md).
COMPRESS_SEQUENCES = 8
# DistillConfig's defaults (chosen on dev text), repeated so that --help and argument checks
# need no torch (hf_projcomp.training imports it); tests/test_cli.py checks that the flags build its config.
DISTILL_LR, DISTILL_STEP_TOKENS = 1e-5, 2048
logger = logging.getLogger("hf_projcomp.cli")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(self.prog, message, status=2)


def fail(prog: str, message: str, status: int = 1) -> NoReturn:
    first = str(message).strip().splitlines()[0] if str(message).strip() else "failed"
    print(f"{prog}: error: {first}", file=sys.stderr)
    sys.exit(status)


# -- argument types: checked at parse time, before any import of torch ---------------------------
def _target(value: str) -> float | int:
    """A fraction in (0, 1) or a whole parameter count > 1."""
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if 0.0 < number < 1.0:
        return number
    if number > 1 and number.is_integer():
        return int(number)
    raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1) or a whole parameter count > 1, got {value!r}")


def _existing_file(value: str) -> str:
    if not Path(value).expanduser().exists():
        raise argparse.ArgumentTypeError(f"{value} does not exist")
    return value


def _model(value: str) -> str:
    from .io import looks_like_path

    if looks_like_path(value) and not Path(value).expanduser().exists():
        raise argparse.ArgumentTypeError(f"model path {value} does not exist")
    return value


def _number(convert: Callable[[str], Any], accept: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse type: ``convert(value)`` when ``accept`` takes it, else an error saying ``expected``."""

    def parse(value: str) -> Any:
        try:
            number = convert(value)
        except ValueError:
            number = None
        if number is None or not accept(number):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")
        return number

    return parse


_positive = _number(int, lambda n: n >= 1, "a positive integer")
_natural = _number(int, lambda n: n >= 0, "a whole number >= 0")
_positive_float = _number(float, lambda n: n > 0, "a number > 0")  # NaN is refused too


def _check_output(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        parser.error(f"output directory {out} already exists; pass --overwrite to replace it")
    if getattr(args, "samples", None) and args.calibration:
        parser.error("give --calibration or --samples, not both")
    if 0 < getattr(args, "distill_tokens", 0) < DISTILL_STEP_TOKENS:
        parser.error(
            f"--distill-tokens must be 0 or at least one training step ({DISTILL_STEP_TOKENS:,} tokens), "
            f"got {args.distill_tokens:,}"
        )


# -- compress ------------------------------------------------------------------------------------
def compress(args: argparse.Namespace) -> None:
    from .compact import compact_prune
    from .evaluate import bits_per_byte
    from .export import CompressionSummary, save_compressed
    from .loading import hub_id_of, load_model

    start = time.perf_counter()
    distill = _distill_config(args) if args.distill_tokens else None
    model, tokenizer = load_model(args.model, args.gguf_file, dtype=args.dtype)
    calibration, described = _calibration(args, model, tokenizer)
    eval_text, eval_data = _eval_text(args)
    before = bits_per_byte(model, tokenizer, eval_text, progress=not args.quiet) if eval_text else None
    logger.info(
        "Pruning to %s of %s parameters with COMPACT, calibrated on %s",
        _budget(args.target_params),
        f"{model.num_parameters():,}",
        described,
    )
    small, small_tok, selection = compact_prune(
        model,
        tokenizer,
        calibration,
        target_params=args.target_params,
        num_sequences=args.num_sequences,
        sequence_length=args.sequence_length,
        progress=not args.quiet,
    )
    settings = {
        **selection.config.to_dict(),
        "vocab_size": small.config.vocab_size,
        "intermediate_size": selection.split.intermediate_size,
    }
    if distill:
        from .training import distill_pruned

        logger.info(
            "Distilling the pruned model from the base on %s tokens of %s", f"{distill.trained_tokens:,}", described
        )
        distill_pruned(
            small,
            model,
            small_tok,
            calibration,
            vocab_indices=selection.kept_token_ids,
            config=distill,
            progress=not args.quiet,
        )
        settings.update({f"distill_{key}": value for key, value in distill.to_dict().items()})
    after = bits_per_byte(small, small_tok, eval_text, progress=not args.quiet) if eval_text else None
    summary = CompressionSummary.from_configs(
        "compact",
        model.config,
        small.config,
        model.num_parameters(),
        small.num_parameters(),
        base_model=hub_id_of(args.model or model.name_or_path),
        calibration_data=described,
        calibration_tokens=selection.frequency_tokens,
        settings=settings,
        training_data=f"{described}, distilled from the base" if distill else None,
        training_tokens=distill.trained_tokens if distill else None,
        eval_data=eval_data,
        bits_per_byte_before=before,
        bits_per_byte_after=after,
    )
    out = save_compressed(small, small_tok, args.output, summary, repo_id=args.repo_id, overwrite=args.overwrite)
    quality = f"; bits/byte {before:.4f} -> {after:.4f}" if after is not None else ""
    print(
        f"saved {out} in {time.perf_counter() - start:.0f} s ({summary.parameters_before:,} -> "
        f"{summary.parameters_after:,} parameters{quality})"
    )
    print(_card_section(out / "README.md", "Sizes"))


def _eval_text(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(the text the card's quality is measured on, how the card names it): ``--eval-text``'s first
    ``--eval-chars`` characters, by default the bundled WikiText-2 test excerpt (seconds); none with
    ``--no-eval``."""
    if args.no_eval:
        return None, None
    return _scored_text(args.eval_text, args.eval_chars)


def _scored_text(path: str | None, chars: int) -> tuple[str, str]:
    """(the first ``chars`` characters of the file at ``path``, else of the bundled WikiText-2 test
    excerpt; how to name them), for ``compress``'s card and ``eval``."""
    from .evaluate import load_text
    from .texts import DESCRIPTIONS, TEST_HEAD, bundled_text

    if path:
        return load_text(path, max_chars=chars), f"the first {chars:,} characters of {Path(path).name}"
    whole = str(bundled_text(TEST_HEAD))
    if chars >= len(whole):
        return whole, DESCRIPTIONS[TEST_HEAD]
    return whole[:chars], f"the first {chars:,} characters of WikiText-2 test (bundled with hf_projcomp)"


def _calibration(args: argparse.Namespace, model: Any, tokenizer: Any) -> tuple[Any, str]:
    """(what compact_prune calibrates on: texts sampled from the model, a file's path or a saved dataset;
    how the model card describes it)."""
    from .compact import generate_calibration_texts
    from .texts import CALIBRATION, DESCRIPTIONS, bundled_text

    if args.samples:
        logger.info("Sampling %d calibration texts of %d tokens from the model", args.samples, args.sample_tokens)
        texts = generate_calibration_texts(
            model, tokenizer, args.samples, args.sample_tokens, seed=args.seed, progress=not args.quiet
        )
        return texts, f"{len(texts)} texts sampled from the base model (top-k 50, seed {args.seed})"
    if args.calibration:
        return _calibration_source(args.calibration), Path(args.calibration).name
    return str(bundled_text(CALIBRATION, path=True)), DESCRIPTIONS[CALIBRATION]


def _distill_config(args: argparse.Namespace) -> Any:
    from .training import DistillConfig

    return DistillConfig(
        max_tokens=args.distill_tokens,
        learning_rate=args.distill_lr,
        lr_scheduler_type=args.distill_schedule,
        seed=args.seed,
    )


def _budget(target: float | int) -> str:
    return f"{target:.0%}" if isinstance(target, float) else f"{target:,}"


def _card_section(card: Path, title: str) -> str:
    """The lines of one ``## title`` section of a written model card."""
    lines, inside = [], False
    for line in card.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line == f"## {title}"
            continue
        if inside and line.strip():
            lines.append(line)
    return "\n".join(lines)


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

    start = time.perf_counter()
    adapter = Path(args.adapter)
    # The base's local directory when it is still there, else its Hub id (see ProjCompConfig).
    base = args.model or ProjCompConfig.from_pretrained(str(adapter)).base_model_name_or_path
    model, tokenizer = load_model(base, args.gguf_file, dtype=args.dtype)
    pc = ProjCompModel.from_pretrained(model, adapter)
    out = pc.save_merged(args.output, tokenizer, overwrite=args.overwrite, repo_id=args.repo_id)
    merged = pc.config
    print(
        f"saved {out} in {time.perf_counter() - start:.0f} s (vanilla "
        f"{merged.architectures[0] if merged.architectures else 'model'}, hidden_size {merged.hidden_size}, "
        f"intermediate_size {merged.intermediate_size}, vocab_size {merged.vocab_size})"
    )


# -- export --------------------------------------------------------------------------------------
def export(args: argparse.Namespace) -> None:
    from .export.gguf import save_gguf
    from .loading import load_model

    start = time.perf_counter()
    # float32 in: the outtype alone decides the stored precision.
    model, tokenizer = load_model(args.model, dtype="float32")
    out = save_gguf(
        model, tokenizer, args.gguf, args.outtype, pre_tokenizer=args.pre_tokenizer, overwrite=args.overwrite
    )
    print(
        f"saved {out} ({out.stat().st_size / 2**20:,.1f} MiB, {args.outtype}, read back and verified) "
        f"in {time.perf_counter() - start:.0f} s; run it with llama.cpp: llama-cli -m {out}"
    )


def _check_export(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    out = Path(args.gguf)
    if out.exists() and not args.overwrite:
        parser.error(f"{out} already exists; pass --overwrite to replace it")
    if out.suffix != ".gguf":
        parser.error(f"--gguf must name a .gguf file, got {out}")


# -- eval ----------------------------------------------------------------------------------------
def evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_text, forward_latency_ratio
    from .loading import load_model

    model, tokenizer = load_model(args.model, dtype=args.dtype)
    base, base_tok = load_model(args.base, args.gguf_file, dtype=args.dtype)
    text, described = _scored_text(args.text, args.chars)
    progress = not (args.json or args.quiet)
    ours, theirs = (
        evaluate_text(model, tokenizer, text, progress=progress),
        evaluate_text(base, base_tok, text, progress=progress),
    )
    latency = forward_latency_ratio(model, base, len(tokenizer), len(base_tok))
    report = {
        "model": args.model,
        "base": args.base or "gemma-3-270m (demo)",
        "text": described,
        "parameters": model.num_parameters(),
        "base_parameters": base.num_parameters(),
        "bits_per_byte": ours["bits_per_byte"],
        "base_bits_per_byte": theirs["bits_per_byte"],
        "word_perplexity": ours["word_perplexity"],
        "base_word_perplexity": theirs["word_perplexity"],
        # The same 256-token forward, alternating with the base's: the median round, and the spread.
        "forward_latency_ratio": latency.median,
        "forward_latency_ratio_range": [latency.low, latency.high],
        "forward_latency_rounds": latency.rounds,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"text: {described}")
    print(f"{'':18}{'model':>14}{'base':>14}")
    print(f"{'parameters':18}{report['parameters']:>14,}{report['base_parameters']:>14,}")
    print(f"{'bits per byte':18}{report['bits_per_byte']:>14.4f}{report['base_bits_per_byte']:>14.4f}")
    print(f"{'word perplexity':18}{report['word_perplexity']:>14.2f}{report['base_word_perplexity']:>14.2f}")
    print(
        f"forward latency: {latency.median:.2f}x the base's (median of {latency.rounds} alternating rounds, "
        f"{latency.low:.2f}-{latency.high:.2f}; {latency.tokens} tokens, this machine: timings vary with its load)"
    )


# -- push ----------------------------------------------------------------------------------------
def push(args: argparse.Namespace) -> None:
    from .export import push_to_hub

    info = push_to_hub(
        args.directory, args.repo_id, private=args.private, token=args.token, commit_message=args.message
    )
    print(f"pushed {args.directory} to {getattr(info, 'commit_url', None) or args.repo_id}")


def _check_push(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """No token, no upload: stop before the network (and before importing torch)."""
    import os

    if args.token or os.environ.get("HF_TOKEN"):
        return
    from huggingface_hub import get_token

    if not get_token():
        parser.error("no Hugging Face token: pass --token, set HF_TOKEN, or log in with `hf auth login`")


# -- parser --------------------------------------------------------------------------------------
_Subparsers = argparse._SubParsersAction  # what add_subparsers returns


def build_parser() -> tuple[Parser, dict[str, Parser]]:
    parser = Parser(
        prog="projcomp",
        description="Compress causal LMs into smaller vanilla transformers checkpoints.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    verbosity = _verbosity_parser()
    parsers = {
        "compress": _compress_parser(sub, verbosity),
        "train": _train_parser(sub),
        "merge": _merge_parser(sub, verbosity),
        "export": _export_parser(sub, verbosity),
        "eval": _eval_parser(sub, verbosity),
        "push": _push_parser(sub, verbosity),
    }
    return parser, parsers


def _verbosity_parser() -> Parser:
    """-q / -v, shared by every command but ``train``."""
    verbosity = Parser(add_help=False)
    group = verbosity.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars")
    group.add_argument("-v", "--verbose", action="store_true", help="debug messages, transformers' info too")
    return verbosity


def _command(
    sub: _Subparsers[Parser], name: str, verbosity: Parser, help: str, description: str | None = None
) -> Parser:
    """A sub-command that shows the examples after its help and takes -q / -v."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[verbosity],
    )


def _model_args(p: argparse.ArgumentParser, flag: str = "--model") -> None:
    p.add_argument(flag, type=_model, default=None, help="Hub id or local directory (default: the demo Gemma-3-270M)")
    p.add_argument("--gguf-file", default=None, help="load this GGUF file of the model")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="dtype to load the model in; outputs keep it (default: the checkpoint's own)",
    )


def _compress_parser(sub: _Subparsers[Parser], verbosity: Parser) -> Parser:
    p = _command(
        sub,
        "compress",
        verbosity,
        help="COMPACT: vocabulary + FFN pruning, training-free or then distilled from the base",
        description="COMPACT pruning to a parameter budget; writes a verified checkpoint + model card.",
    )
    _model_args(p)
    p.add_argument(
        "--calibration",
        type=_existing_file,
        help=".txt/.jsonl file or a saved datasets directory (default: the bundled WikiText-2 excerpt)",
    )
    p.add_argument("--samples", type=_positive, help="calibrate on N texts sampled from the model instead")
    p.add_argument("--sample-tokens", type=_positive, default=256, help="tokens per sampled text")
    p.add_argument(
        "--target-params",
        type=_target,
        default=0.5,
        help="fraction of the parameters in (0, 1), or a parameter count (default: %(default)s)",
    )
    p.add_argument(
        "--num-sequences",
        type=_positive,
        default=COMPRESS_SEQUENCES,
        help="activation-pass sequences (default: %(default)s)",
    )
    p.add_argument("--sequence-length", type=_positive, default=512, help="activation-pass sequence length")
    p.add_argument(
        "--eval-text",
        type=_existing_file,
        help="report bits per byte before/after on this text file in the model card (default: the bundled "
        "WikiText-2 test excerpt)",
    )
    p.add_argument("--eval-chars", type=_positive, default=20_000, help="characters of it to score")
    p.add_argument("--no-eval", action="store_true", help="skip the bits-per-byte measurement (card: not measured)")
    p.add_argument("--output", default="compressed-model", help="output directory (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--repo-id", help="Hub repo id shown in the model card's usage snippet")
    _distill_args(p)
    p.set_defaults(func=compress, check=_check_output)
    return p


def _distill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--distill-tokens",
        type=_natural,
        default=0,
        help="after pruning, train every weight on KL(base || pruned) over this many tokens of the "
        "calibration text (e.g. 32768: minutes on a CPU; default: 0, training-free)",
    )
    p.add_argument(
        "--distill-lr",
        type=_positive_float,
        default=DISTILL_LR,
        help="(peak) learning rate of --distill-tokens (default: %(default)s)",
    )
    p.add_argument(
        "--distill-schedule",
        choices=SCHEDULERS,
        default=SCHEDULERS[0],
        help="learning-rate schedule after 2 warm-up steps (default: %(default)s; from 65,536 tokens "
        "on, dev text preferred cosine from 2e-5)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="sampling seed (with --samples) and block order (with --distill-tokens)"
    )


def _train_parser(sub: _Subparsers[Parser]) -> Parser:
    p = sub.add_parser(
        "train",
        help="projected compression through the HF Trainer (HF-style arguments)",
        add_help=False,
        description="All arguments go to hf_projcomp.training.script (HfArgumentParser + TrainingArguments); "
        "`projcomp train --help` lists them.",
    )
    p.add_argument("training_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=train)
    return p


def _merge_parser(sub: _Subparsers[Parser], verbosity: Parser) -> Parser:
    p = _command(sub, "merge", verbosity, help="adapter -> verified vanilla checkpoint")
    p.add_argument(
        "adapter", type=_existing_file, help="directory with adapter_config.json + adapter_model.safetensors"
    )
    _model_args(p)
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--repo-id")
    p.set_defaults(func=merge, check=_check_output)
    return p


def _export_parser(sub: _Subparsers[Parser], verbosity: Parser) -> Parser:
    p = _command(
        sub, "export", verbosity, help="model directory -> GGUF file for llama.cpp (verified by reading it back)"
    )
    p.add_argument(
        "model",
        type=_model,
        nargs="?",
        default=None,
        help="model directory or Hub id, e.g. projcomp compress's output (default: the demo Gemma-3-270M)",
    )
    p.add_argument("--gguf", required=True, help="the .gguf file to write")
    p.add_argument(
        "--outtype",
        default="f16",
        choices=("f32", "f16", "bf16", "q8_0"),
        help="precision of the weight matrices (norms and biases stay f32); default f16",
    )
    p.add_argument(
        "--pre-tokenizer",
        default=None,
        help="llama.cpp's name of a byte-level pre-tokenizer hf_projcomp does not recognise",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=export, check=_check_export)
    return p


def _eval_parser(sub: _Subparsers[Parser], verbosity: Parser) -> Parser:
    p = _command(sub, "eval", verbosity, help="bits per byte, word perplexity, parameters, latency vs the base")
    p.add_argument("model", type=_model, help="the compressed model (directory or Hub id)")
    _model_args(p, "--base")
    p.add_argument(
        "--text",
        type=_existing_file,
        help="text file to score (default: the first 20,000 characters of WikiText-2 test, bundled)",
    )
    p.add_argument("--chars", type=_positive, default=20_000, help="characters of the text to score")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=evaluate)
    return p


def _push_parser(sub: _Subparsers[Parser], verbosity: Parser) -> Parser:
    p = _command(sub, "push", verbosity, help="upload a saved model directory in one commit")
    p.add_argument("directory", type=_existing_file)
    p.add_argument("repo_id")
    p.add_argument("--private", action="store_true")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    p.add_argument("--message", default="Upload compressed model (hf_projcomp)")
    p.set_defaults(func=push, check=_check_push)
    return p


def configure_logging(args: argparse.Namespace) -> None:
    """hf_projcomp's info messages are shown by default (the one-time demo conversion says so, the
    steps say what they do); -q shows warnings only and no progress bars, -v adds debug and
    transformers' info."""
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    package = logging.getLogger("hf_projcomp")
    package.handlers[:] = [handler]
    package.setLevel(level)
    package.propagate = False
    if quiet and "tqdm" not in sys.modules:
        # transformers' GGUF reader (the demo model's one-time conversion) uses plain tqdm, which only
        # this reaches, read when tqdm is imported (the command imports it later)
        os.environ["TQDM_DISABLE"] = "1"
    if verbose or quiet:
        from transformers.utils import logging as hf_logging

        if verbose:
            hf_logging.set_verbosity_info()
        else:  # transformers' own bars too ("Loading weights"), and the Hub's downloads
            hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, parsers = build_parser()
    if argv[:1] == ["train"]:  # HF-style flags belong to HfArgumentParser, not to this parser
        args = argparse.Namespace(command="train", func=train, training_args=argv[1:])
    else:
        args = parser.parse_args(argv)
        if getattr(args, "check", None):
            args.check(parsers[args.command], args)
    configure_logging(args)
    try:
        args.func(args)
    except Exception as err:
        if not is_user_error(err):
            raise
        fail(f"projcomp {args.command}", str(err))


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` reports a mistake in the user's input, or a Hub refusal, rather than a bug."""
    from .export import HubError
    from .loading import ModelLoadError

    return isinstance(err, (*USER_ERRORS, ModelLoadError, HubError))


if __name__ == "__main__":
    main()
