"""Optimizer-step time of projected compression vs plain training of the same-size vanilla model.

    python benchmarks/train_speed.py [--tokens 8192 32768 131072] [--layers 4]

A mid-size Llama (hidden 1024, intermediate 2816, 16 heads, vocabulary 8192) compressed to 50% of
its non-embedding parameters. For every tokens-per-step budget, one process per method runs a
warm-up micro-batch and then one full optimizer step, side by side in this run:

- ``vanilla``: the hard-pruned small model, every weight trainable, AdamW (what training a model of
  the target size costs);
- ``pc_amortized``: ProjCompTrainer's step: W_c computed once, micro-batches on the small model,
  one gradient push into P and A, clipping, AdamW;
- ``pc_naive`` (smallest budget only, for context): a plain Trainer's step, autograd through
  every projection in every micro-batch.

The step is the one the trainers run (same model calls, clipping and optimizer), without data
loading. Peak memory is the process's maximum resident set. Writes
``benchmarks/results/train_speed.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_projcomp import ProjCompConfig, get_projcomp_model, hard_prune

OUT = Path(__file__).resolve().parent / "results"
MICRO_BATCH = (4, 512)  # sequences x tokens per micro-batch


def base_model(layers: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=layers, num_attention_heads=16,
                         num_key_value_heads=4, head_dim=64, vocab_size=8192, max_position_embeddings=1024)
    return LlamaForCausalLM(config)


def measure(method: str, tokens: int, layers: int) -> dict:
    pc = get_projcomp_model(base_model(layers), ProjCompConfig(target_params=0.5), progress=False)
    if method == "vanilla":
        cfg = pc.projcomp_config
        model = hard_prune(pc.base_model, cfg.hidden_indices, cfg.intermediate_indices).train()
        model.requires_grad_(True)
        params = list(model.parameters())
    else:
        pc.set_amortized(method == "pc_amortized")
        pc.train()
        model, params = pc, pc.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    micro_batches = tokens // (MICRO_BATCH[0] * MICRO_BATCH[1])
    batch = torch.randint(0, 8192, MICRO_BATCH, generator=torch.Generator().manual_seed(0))

    def step(n: int) -> None:
        for _ in range(n):
            (model(input_ids=batch, labels=batch).loss / n).backward()
        if method == "pc_amortized":
            pc.push_gradients()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(1)  # warm-up: allocator, optimizer state, first materialisation
    start = time.perf_counter()
    step(micro_batches)
    seconds = time.perf_counter() - start
    small = sum(p.numel() for p in (model.parameters() if method == "vanilla" else pc.target.parameters()))
    return {"method": method, "tokens_per_step": tokens, "micro_batches": micro_batches, "step_seconds": seconds,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "small_model_parameters": small, "base_parameters": pc.base_model.num_parameters()}


def write(results: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "train_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = {(r["method"], r["tokens_per_step"]): r for r in results["rows"]}
    lines = [
        "# Projected compression step time vs plain training of the same-size model",
        "",
        f"{results['model']}. {results['machine']}, {results['date']}. One optimizer step after a warm-up "
        f"micro-batch; micro-batches of {MICRO_BATCH[0]}x{MICRO_BATCH[1]} tokens; AdamW, clipping.",
        "",
        "| tokens/step | vanilla step (s) | PC amortised step (s) | PC / vanilla | PC naive / vanilla | "
        "peak RSS vanilla (GiB) | peak RSS PC (GiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for tokens in results["tokens"]:
        v, p, n = rows.get(("vanilla", tokens)), rows.get(("pc_amortized", tokens)), rows.get(("pc_naive", tokens))
        if not (v and p):
            continue
        naive = f"{n['step_seconds'] / v['step_seconds']:.3f}" if n else ""
        lines.append(f"| {tokens:,} | {v['step_seconds']:.1f} | {p['step_seconds']:.1f} | "
                     f"{p['step_seconds'] / v['step_seconds']:.3f} | {naive} | {v['peak_rss_gib']:.2f} | "
                     f"{p['peak_rss_gib']:.2f} |")
    (OUT / "train_speed.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    tokens = [t for t in results["tokens"] if ("vanilla", t) in rows and ("pc_amortized", t) in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(tokens, [rows[("pc_amortized", t)]["step_seconds"] / rows[("vanilla", t)]["step_seconds"] for t in tokens],
            "o-", label="PC amortised / vanilla")
    ax.axhline(1.15, color="gray", ls="--", label="goal 1.15")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens per optimizer step")
    ax.set_ylabel("step time ratio")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "train_speed.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[8192, 32768, 131072])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # child process: one measurement as JSON on stdout
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.layers)))
        return
    results = {"model": f"Llama, hidden 1024 -> 50% target, {args.layers} layers, vocabulary 8192",
               "machine": f"{os.cpu_count()} CPU cores, no GPU, torch {torch.__version__}, {platform.machine()}",
               "date": date.today().isoformat(), "tokens": args.tokens, "rows": []}
    plan = [(m, t) for t in args.tokens for m in ("vanilla", "pc_amortized")] + [("pc_naive", min(args.tokens))]
    for method, tokens in plan:
        out = subprocess.run([sys.executable, __file__, "--layers", str(args.layers), "--one", method, str(tokens)],
                             check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(row, flush=True)
        results["rows"].append(row)
        write(results)


if __name__ == "__main__":
    main()
