"""Gemma-3-270M and its 50% COMPACT compression run through llama.cpp, against transformers (not a unit test).

    pip install llama-cpp-python==0.3.36          # builds llama.cpp (~30 min on 2 cores; keep the wheel)
    python benchmarks/llama_cpp_gemma.py --converter path/to/llama.cpp/convert_hf_to_gguf.py

For the base (the demo checkpoint) and the output of ``projcomp compress`` on its defaults, two GGUF
files each, float32:

- ``stock``: llama.cpp's own ``convert_hf_to_gguf.py`` (the one vendored in the llama-cpp-python
  sdist) run on the model directory, unpatched;
- ``ours``: ``hf_projcomp.export.save_gguf`` (``projcomp export``).

Each is compared with transformers on the same machine in the same run:
- greedy decoding: 40 new tokens on 3 prompts, identical or not, and the first position that differs;
- max |logit difference| at the last prompt position (and the logit scale);
- tokenisation of the first 60,000 characters of WikiText-2 test, identical or not;
- bits per byte on that text, 1024-token windows (``hf_projcomp.evaluate``'s protocol for both);
- file size, and tokens/s of a 512-token prefill and of 40 greedy decode steps, llama.cpp vs
  transformers, 2 threads each, median of 3.

Writes ``benchmarks/results/llama_cpp_gemma.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from data import TEST, data_file  # benchmarks/data.py

from hf_projcomp.demo import demo_model_path
from hf_projcomp.evaluate import _tokenize, _windows, bits_per_byte, load_text
from hf_projcomp.export.gguf import save_gguf
from hf_projcomp.loading import load_model

OUT = Path(__file__).resolve().parent / "results"
WORK = OUT / ".runs" / "llama_cpp"
PROMPTS = (
    "The history of the city begins",
    "In mathematics, a prime number is",
    " = Valkyria Chronicles III = \n\n",
)
NEW_TOKENS, CHARS, WINDOW, THREADS = 40, 60_000, 1024, 2


def llama(path: Path, n_ctx: int = WINDOW):
    from llama_cpp import Llama

    return Llama(str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=THREADS, n_threads_batch=THREADS)


def greedy_llama(llm, ids: list[int]) -> tuple[list[int], np.ndarray]:
    llm.reset()
    llm.eval(ids)
    last = np.asarray(llm.scores[len(ids) - 1], dtype=np.float64)
    out, nxt = [], int(np.argmax(last))
    for _ in range(NEW_TOKENS):
        out.append(nxt)
        llm.eval([nxt])
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    return out, last


@torch.no_grad()
def greedy_hf(model, ids: list[int]) -> tuple[list[int], np.ndarray]:
    """The same loop as greedy_llama (argmax, KV cache, no stop at EOS)."""
    output = model(torch.tensor([ids]), use_cache=True)
    last = output.logits[0, -1].double().numpy()
    out, nxt = [], int(output.logits[0, -1].argmax())
    for _ in range(NEW_TOKENS):
        out.append(nxt)
        output = model(torch.tensor([[nxt]]), past_key_values=output.past_key_values, use_cache=True)
        nxt = int(output.logits[0, -1].argmax())
    return out, last


def bpb_llama(llm, tokenizer, text: str) -> float:
    ids, bos = _tokenize(tokenizer, text)
    total = 0.0
    for window in _windows(ids, bos, WINDOW, bos_each_window=False):
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[: len(window)], dtype=np.float64)[:-1]
        logits -= logits.max(axis=1, keepdims=True)
        logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        total -= logprobs[np.arange(len(window) - 1), window[1:]].sum()
    return total / math.log(2) / len(text.encode("utf-8"))


def speed(fn) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, model, tokenizer, gguf_files: dict[str, Path], text: str) -> dict:
    torch.set_num_threads(THREADS)
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    hf = [greedy_hf(model, ids) for ids in prompts]
    hf_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    row = {
        "model": name,
        "parameters": model.num_parameters(),
        "vocab_size": model.config.vocab_size,
        "transformers_bits_per_byte": bits_per_byte(model, tokenizer, text, window=WINDOW, progress=False),
    }
    prefill = torch.tensor([hf_ids[:512]])
    with torch.no_grad():
        row["transformers_prefill_tok_s"] = 512 / speed(lambda: model(prefill))
        row["transformers_decode_tok_s"] = NEW_TOKENS / speed(lambda: greedy_hf(model, prompts[0]))
    row["gguf"] = {}
    for route, path in gguf_files.items():
        if path is None:
            row["gguf"][route] = {"error": "conversion failed (see the log)"}
            continue
        llm = llama(path)
        try:
            results = [greedy_llama(llm, ids) for ids in prompts]
            tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            entry = {
                "file_mib": path.stat().st_size / 2**20,
                "greedy_identical": [got == want for (got, _), (want, _) in zip(results, hf, strict=True)],
                "first_difference": [
                    next((i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b), None)
                    for (got, _), (want, _) in zip(results, hf, strict=True)
                ],
                "max_abs_logit_diff_last_position": max(
                    float(np.abs(a - b).max()) for (_, a), (_, b) in zip(results, hf, strict=True)
                ),
                "logit_scale": max(float(np.abs(b).max()) for _, b in hf),
                "tokenization_identical": tokens == hf_ids,
                "tokens": len(hf_ids),
                "bits_per_byte": bpb_llama(llm, tokenizer, text),
            }
            entry["bits_per_byte_diff"] = entry["bits_per_byte"] - row["transformers_bits_per_byte"]

            def prefill_llama(llm=llm):
                llm.reset()
                llm.eval(hf_ids[:512])

            entry["prefill_tok_s"] = 512 / speed(prefill_llama)
            entry["decode_tok_s"] = NEW_TOKENS / speed(lambda llm=llm: greedy_llama(llm, prompts[0]))
        finally:
            llm.close()
        row["gguf"][route] = entry
        print(name, route, json.dumps(entry), flush=True)
    return row


def stock_convert(converter: Path, model_dir: Path, out: Path) -> Path | None:
    if out.is_file():
        return out
    run = subprocess.run(
        [sys.executable, str(converter), str(model_dir), "--outfile", str(out), "--outtype", "f32"],
        capture_output=True,
        text=True,
    )
    (out.parent / f"{out.stem}.log").write_text(run.stdout + run.stderr)
    if run.returncode:
        print(f"stock converter failed on {model_dir}: {run.stderr.strip().splitlines()[-1]}", flush=True)
        return None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--converter", type=Path, required=True, help="llama.cpp's convert_hf_to_gguf.py")
    args = parser.parse_args()
    import llama_cpp

    WORK.mkdir(parents=True, exist_ok=True)
    text = load_text(data_file(TEST), max_chars=CHARS)
    compressed_dir = WORK / "compact50"
    if not compressed_dir.is_dir():
        subprocess.run(["projcomp", "compress", "--output", str(compressed_dir), "-q"], check=True)
    results = {
        "machine": f"{os.cpu_count()} CPU cores, {THREADS} threads each, torch {torch.__version__}, "
        f"llama-cpp-python {llama_cpp.__version__}, {platform.machine()}",
        "date": date.today().isoformat(),
        "text": f"first {CHARS:,} characters of WikiText-2 test",
        "window": WINDOW,
        "rows": [],
    }
    for name, directory in (("base", Path(demo_model_path())), ("compact 50%", compressed_dir)):
        model, tokenizer = load_model(str(directory), dtype="float32")
        stem = name.split()[0]
        files = {
            "stock": stock_convert(args.converter, directory, WORK / f"{stem}-stock.gguf"),
            "ours": save_gguf(model, tokenizer, WORK / f"{stem}-ours.gguf", overwrite=True),
        }
        results["rows"].append(measure(name, model, tokenizer, files, text))
        del model
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "llama_cpp_gemma.json").write_text(json.dumps(results, indent=2) + "\n")
    (OUT / "llama_cpp_gemma.md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [
        "# Gemma-3-270M through llama.cpp vs transformers",
        "",
        f"{results['machine']}; {results['date']}. Text: {results['text']}, {results['window']}-token windows. "
        "GGUF files in float32: `stock` = llama.cpp's convert_hf_to_gguf.py on the model directory, `ours` = "
        "`projcomp export`. Speeds are medians of 3, llama.cpp and transformers measured in the same run.",
        "",
        "| model | GGUF | MiB | greedy 40 × 3 identical | max abs logit diff (scale) | tokenisation identical "
        "| bpb llama.cpp | bpb transformers | Δ | prefill tok/s llama.cpp / transformers "
        "| decode tok/s llama.cpp / transformers |",
        "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        for route, e in row["gguf"].items():
            if "error" in e:
                lines.append(f"| {row['model']} | {route} | | {e['error']} | | | | | | | |")
                continue
            lines.append(
                f"| {row['model']} | {route} | {e['file_mib']:,.0f} | {sum(e['greedy_identical'])}/3 "
                f"| {e['max_abs_logit_diff_last_position']:.4f} ({e['logit_scale']:.1f}) "
                f"| {e['tokenization_identical']} "
                f"({e['tokens']:,} tokens) | {e['bits_per_byte']:.6f} | {row['transformers_bits_per_byte']:.6f} "
                f"| {e['bits_per_byte_diff']:+.6f} "
                f"| {e['prefill_tok_s']:,.0f} / {row['transformers_prefill_tok_s']:,.0f} "
                f"| {e['decode_tok_s']:,.1f} / {row['transformers_decode_tok_s']:,.1f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
