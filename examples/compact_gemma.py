"""COMPACT on the bundled Gemma-3-270M through the Python API, scored and saved with a model card.

    python examples/compact_gemma.py --calibration my_text.txt [--eval-text held_out.txt]
        [--target-params 0.5] [--output outputs/gemma-3-270m-compact]

Calibrate on text like the text the model will serve (a .txt/.jsonl file; WikiText-2's validation
split is what the benchmarks use); ``--eval-text`` reports bits per byte before and after on its
first 20,000 characters. ``projcomp compress`` is the same job on the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_projcomp import compact_prune
from hf_projcomp.demo import load_demo_model
from hf_projcomp.evaluate import bits_per_byte, load_text
from hf_projcomp.export import CompressionSummary, save_compressed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", required=True, help="calibration text (.txt or .jsonl)")
    parser.add_argument("--eval-text", help="text file to score before and after (first 20,000 characters)")
    parser.add_argument("--target-params", type=float, default=0.5)
    parser.add_argument("--output", default="outputs/gemma-3-270m-compact")
    args = parser.parse_args()
    for path in filter(None, (args.calibration, args.eval_text)):
        if not Path(path).is_file():
            parser.error(f"{path} does not exist")

    model, tokenizer = load_demo_model()
    text = load_text(args.eval_text, max_chars=20_000) if args.eval_text else None
    before = bits_per_byte(model, tokenizer, text) if text else None
    small, small_tok, selection = compact_prune(model, tokenizer, args.calibration, target_params=args.target_params)
    after = bits_per_byte(small, small_tok, text) if text else None
    summary = CompressionSummary.from_configs(
        "compact",
        model.config,
        small.config,
        model.num_parameters(),
        small.num_parameters(),
        base_model="google/gemma-3-270m",
        calibration_data=Path(args.calibration).name,
        calibration_tokens=selection.frequency_tokens,
        settings=selection.config.to_dict(),
        eval_data=f"the first 20,000 characters of {Path(args.eval_text).name}" if text else None,
        bits_per_byte_before=before,
        bits_per_byte_after=after,
    )
    out = save_compressed(small, small_tok, args.output, summary, overwrite=True)
    quality = f"; bits/byte {before:.3f} -> {after:.3f}" if text else ""
    print(
        f"{model.num_parameters():,} -> {small.num_parameters():,} parameters "
        f"(vocabulary {small.config.vocab_size:,}, d_ff {small.config.intermediate_size}){quality}; saved to {out}"
    )


if __name__ == "__main__":
    main()
