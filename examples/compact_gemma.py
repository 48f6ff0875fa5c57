"""COMPACT on the bundled Gemma-3-270M through the Python API, scored and saved with a model card.

    python examples/compact_gemma.py [--target-params 0.5] [--output outputs/gemma-3-270m-compact]

Calibration is ``../shared/data/wikitext-2/valid.txt`` and evaluation the first 20,000 characters
of the WikiText-2 test file when ``../shared/data`` is present (``projcomp compress`` is the same
job on the command line, with self-sampled calibration text by default).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_projcomp import compact_prune
from hf_projcomp.demo import load_demo_model
from hf_projcomp.evaluate import bits_per_byte, load_text
from hf_projcomp.export import CompressionSummary, save_compressed

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target-params", type=float, default=0.5)
    parser.add_argument("--output", default="outputs/gemma-3-270m-compact")
    args = parser.parse_args()

    model, tokenizer = load_demo_model()
    calibration = DATA / "wikitext-2" / "valid.txt"
    if not calibration.is_file():
        raise SystemExit(f"{calibration} not found: run `projcomp compress` to calibrate on self-sampled text")
    text = load_text(DATA / "wikitext-2-raw" / "wiki.test.raw", max_chars=20_000)
    before = bits_per_byte(model, tokenizer, text)
    small, small_tok, result = compact_prune(model, tokenizer, str(calibration), args.target_params, return_result=True)
    after = bits_per_byte(small, small_tok, text)
    summary = CompressionSummary.from_configs(
        "compact", model.config, small.config, model.num_parameters(), small.num_parameters(),
        base_model="google/gemma-3-270m", calibration_data="WikiText-2 validation",
        calibration_tokens=result.frequency_tokens, settings={"target_params": args.target_params},
        eval_data="the first 20,000 characters of WikiText-2 test", bits_per_byte_before=before,
        bits_per_byte_after=after,
    )
    out = save_compressed(small, small_tok, args.output, summary, overwrite=True)
    print(f"{model.num_parameters():,} -> {small.num_parameters():,} parameters "
          f"(vocabulary {small.config.vocab_size:,}, d_ff {small.config.intermediate_size}); "
          f"bits/byte {before:.3f} -> {after:.3f}; saved to {out}")


if __name__ == "__main__":
    main()
