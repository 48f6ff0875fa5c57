"""Compress the bundled Gemma-3-270M with projected compression and report size and quality.

Runs offline with no files of your own: the model comes from the ``demo`` extra, calibration and
evaluation text from ``../shared/data`` when present (otherwise the model writes its own
calibration text and evaluation is skipped). The merged result is a vanilla ``Gemma3ForCausalLM``
checkpoint that plain ``transformers`` loads.

    python examples/compress_gemma.py                       # FFN 2048 -> 1536, no training
    python examples/compress_gemma.py --hidden-size 512 --intermediate-size 1024

Without training the projections this is the step-0 (hard-pruned) model; training them with the
``transformers.Trainer`` is what recovers quality.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from hf_projcomp import ProjCompConfig, get_projcomp_model
from hf_projcomp.demo import load_demo_model
from hf_projcomp.evaluate import bits_per_byte, load_text

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def calibration_batches(model, tokenizer, sequences: int, length: int) -> list[torch.Tensor]:
    valid = DATA / "wikitext-2" / "valid.txt"
    if valid.is_file():
        ids = tokenizer(load_text(valid, max_chars=sequences * length * 8), return_tensors="pt").input_ids[0]
        return [ids[i * length : (i + 1) * length].unsqueeze(0) for i in range(min(sequences, len(ids) // length))]
    logging.info("no ../shared/data: sampling %d calibration sequences from the model itself", sequences)
    start = torch.full((sequences, 1), tokenizer.bos_token_id)
    with torch.no_grad():
        out = model.generate(start, do_sample=True, max_new_tokens=length - 1, min_new_tokens=length - 1, top_k=50)
    return [out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=None, help="target d_model (default: unchanged, 640)")
    parser.add_argument("--intermediate-size", type=int, default=1536, help="target d_ff (default: 1536)")
    parser.add_argument("--importance", default="activation", choices=["activation", "magnitude"])
    parser.add_argument("--calibration-sequences", type=int, default=16)
    parser.add_argument("--calibration-length", type=int, default=256)
    parser.add_argument("--eval-chars", type=int, default=20_000, help="prefix of WikiText-2 test to score")
    parser.add_argument("--output", default="outputs/gemma-3-270m-projcomp", help="where the merged model goes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model, tokenizer = load_demo_model()
    test_file = DATA / "wikitext-2-raw" / "wiki.test.raw"
    text = load_text(test_file, max_chars=args.eval_chars) if test_file.is_file() else None

    calibration = calibration_batches(model, tokenizer, args.calibration_sequences, args.calibration_length)
    base_params = model.num_parameters()
    base_bpb = bits_per_byte(model, tokenizer, text) if text else None

    config = ProjCompConfig(
        hidden_size=args.hidden_size, intermediate_size=args.intermediate_size, importance=args.importance
    )
    pc = get_projcomp_model(model, config, calibration_data=calibration)
    pc.print_trainable_parameters()
    small = pc.merge_and_unload()
    small.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    small_bpb = bits_per_byte(small, tokenizer, text) if text else None

    def fmt(bpb: float | None) -> str:
        return f"{bpb:.3f}" if bpb is not None else "n/a (no ../shared/data)"

    print(f"\n{'':<12}{'parameters':>14}{'bits/byte':>12}")
    print(f"{'base':<12}{base_params:>14,}{fmt(base_bpb):>12}")
    print(f"{'compressed':<12}{small.num_parameters():>14,}{fmt(small_bpb):>12}")
    print(f"ratio       {small.num_parameters() / base_params:>14.3f}")
    print(f"saved to {args.output} (hidden {small.config.hidden_size}, intermediate {small.config.intermediate_size})")


if __name__ == "__main__":
    main()
