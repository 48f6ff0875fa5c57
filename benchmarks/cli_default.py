"""How many activation sequences `projcomp compress` uses by default, chosen on dev text.

    python benchmarks/cli_default.py [--sequences 8 16 32 64] [--dev-chars 60000]

The CLI's default job (bundled calibration text, 50% of Gemma-3-270M's parameters) must finish in
about a minute on 2 CPU cores; the activation pass is most of its cost (about 1 s per 512-token
sequence), so its length is traded against quality here. Each setting is scored by bits per byte on
**dev** text: the held-out tail of WikiText-2 validation that the bundled calibration text stops
before (``benchmarks/data.py``), first ``--dev-chars`` characters. The previous default (16 texts
sampled from the model, top-k 50, seed 0) is scored the same way. The WikiText-2 test prefix is
scored once, for the chosen setting only (``--chosen``). Writes ``benchmarks/results/cli_default.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

from data import TEST, data_file, dev_text  # benchmarks/data.py
from machine import describe  # benchmarks/machine.py

from hf_projcomp.compact import compact_prune, generate_calibration_texts
from hf_projcomp.demo import load_demo_model
from hf_projcomp.evaluate import bits_per_byte, load_text
from hf_projcomp.texts import CALIBRATION, bundled_text

OUT = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--dev-chars", type=int, default=60_000)
    parser.add_argument("--chosen", type=int, help="score this setting once on the WikiText-2 test prefix")
    parser.add_argument("--test-chars", type=int, default=60_000)
    args = parser.parse_args()
    model, tokenizer = load_demo_model()
    if args.chosen:
        score_on_test(model, tokenizer, args.chosen, args.test_chars)
        return
    dev = dev_text(args.dev_chars)
    results = {
        "model": "Gemma-3-270M (GGUF Q4_K_M dequantized to fp32)",
        "target_params": 0.5,
        "dev": f"WikiText-2 validation after the bundled calibration text, first {len(dev):,} characters",
        "machine": describe(),
        "date": date.today().isoformat(),
        "base_dev_bpb": bits_per_byte(model, tokenizer, dev),
        "rows": [],
    }
    sources = {f"bundled, {n} sequences": (CALIBRATION, n) for n in args.sequences}
    sources["16 samples from the model (previous default), 64 sequences"] = (None, 64)
    for label, (name, sequences) in sources.items():
        start = time.perf_counter()
        calibration = (
            str(bundled_text(name, path=True))
            if name
            else generate_calibration_texts(model, tokenizer, 16, 256, seed=0)
        )
        small, small_tok, _ = compact_prune(model, tokenizer, calibration, target_params=0.5, num_sequences=sequences)
        seconds = time.perf_counter() - start
        row = {
            "calibration": label,
            "num_sequences": sequences,
            "seconds": round(seconds, 1),
            "vocab_size": small.config.vocab_size,
            "intermediate_size": small.config.intermediate_size,
            "dev_bpb": bits_per_byte(small, small_tok, dev),
        }
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        write(results)


def score_on_test(model, tokenizer, sequences: int, chars: int) -> None:
    """The chosen setting, scored once on the WikiText-2 test prefix (added to its row)."""
    results = json.loads((OUT / "cli_default.json").read_text())
    row = next(r for r in results["rows"] if r["calibration"] == f"bundled, {sequences} sequences")
    small, small_tok, _ = compact_prune(
        model, tokenizer, str(bundled_text(CALIBRATION, path=True)), target_params=0.5, num_sequences=sequences
    )
    test = load_text(data_file(TEST), max_chars=chars)
    row["test_bpb"], row["base_test_bpb"] = bits_per_byte(small, small_tok, test), bits_per_byte(model, tokenizer, test)
    results["test"] = f"WikiText-2 test, first {len(test):,} characters"
    write(results)


def write(results: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cli_default.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# `projcomp compress` default: activation sequences vs quality (dev text)",
        "",
        f"{results['model']} to {results['target_params']:.0%} of its parameters. Dev: {results['dev']} "
        f"(base {results['base_dev_bpb']:.4f} bits/byte, 1024-token windows). {results['machine']}, {results['date']}. "
        "Seconds: compact_prune alone (sampling included for the sampled row), one run each, measured beside "
        "other work: a guide, not a benchmark (benchmarks/results/first_run.md times the CLI alone). Test: "
        f"{results.get('test', 'not scored')}, scored once, for the chosen setting only.",
        "",
        "| calibration | sequences | vocab × d_ff | dev bits/byte | Δ vs base | test bits/byte (Δ) | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        test = f"{r['test_bpb']:.4f} ({r['test_bpb'] - r['base_test_bpb']:+.4f})" if "test_bpb" in r else ""
        lines.append(
            f"| {r['calibration']} | {r['num_sequences']} | {r['vocab_size']:,} × {r['intermediate_size']} | "
            f"{r['dev_bpb']:.4f} | {r['dev_bpb'] - results['base_dev_bpb']:+.4f} | {test} | {r['seconds']} |"
        )
    (OUT / "cli_default.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
