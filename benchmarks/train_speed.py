"""Optimizer-step time of projected compression vs plain training of the same-size vanilla model.

    python benchmarks/train_speed.py [--tokens 8192 32768 131072] [--layers 4] [--repeats 3]

A mid-size Llama (hidden 1024, intermediate 2816, 16 heads / 4 KV heads, vocabulary 8192) compressed
to 50% of its non-embedding parameters. Two models live in one process and take their steps
alternately, so slow drifts of a shared machine hit both alike:

- ``vanilla``: the hard-pruned small model, every weight trainable, AdamW (what training a model of
  the target size costs);
- ``pc_amortized``: ProjCompTrainer's step: W_c computed once, micro-batches on the small model,
  one gradient push into P and A, clipping, AdamW.

For each tokens-per-step budget: a warm-up micro-batch each, then ``--repeats`` alternating steps
(fewer once a method's steps pass 100 s); the median is reported. ``pc_naive`` (a plain Trainer's
step, autograd through every projection in every micro-batch) is timed at the smallest budget for
context. Peak memory: the maximum resident set of a separate process per method running one step
at the smallest budget. The step is the one the trainers run (same model calls, clipping and
optimizer) without data loading. Writes ``benchmarks/results/train_speed.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
from machine import describe  # benchmarks/machine.py
from plotting import pyplot  # benchmarks/plotting.py
from transformers import LlamaConfig, LlamaForCausalLM

from hf_projcomp import ProjCompConfig, get_projcomp_model, hard_prune
from hf_projcomp.projection import unwrap

OUT = Path(__file__).resolve().parent / "results"
MICRO_BATCH = (4, 512)  # sequences x tokens per micro-batch
TIME_CAP = 100.0  # seconds of timed steps per method and budget before repeats stop


class Runner:
    """One method's model, optimizer and step."""

    def __init__(self, method: str, layers: int) -> None:
        torch.manual_seed(0)
        config = LlamaConfig(
            hidden_size=1024,
            intermediate_size=2816,
            num_hidden_layers=layers,
            num_attention_heads=16,
            num_key_value_heads=4,
            head_dim=64,
            vocab_size=8192,
            max_position_embeddings=1024,
        )
        pc = get_projcomp_model(
            LlamaForCausalLM(config), ProjCompConfig(target_params=0.5, importance="magnitude"), progress=False
        )
        self.method, self.pc = method, pc
        if method == "vanilla":
            kept = unwrap(pc).selection()
            self.model = hard_prune(unwrap(pc).model, kept.hidden, kept.ffn).train()
            self.model.requires_grad_(True)
            self.params = list(self.model.parameters())
            self.small_parameters = self.model.num_parameters()
        else:
            pc.set_amortized(method == "pc_amortized")
            self.model, self.params = pc.train(), pc.trainable_parameters()
            self.small_parameters = unwrap(pc).compressed.num_parameters()
        self.base_parameters = unwrap(pc).model.num_parameters()
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4)
        self.batch = torch.randint(0, 8192, MICRO_BATCH, generator=torch.Generator().manual_seed(0))

    def step(self, micro_batches: int) -> float:
        start = time.perf_counter()
        for _ in range(micro_batches):
            (self.model(input_ids=self.batch, labels=self.batch).loss / micro_batches).backward()
        if self.method == "pc_amortized":
            self.pc.push_gradients()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def peak_memory(method: str, tokens: int, layers: int) -> float:
    """GiB: the maximum resident set of this process after one step (run in a child process)."""
    runner = Runner(method, layers)
    runner.step(1)
    runner.step(tokens // (MICRO_BATCH[0] * MICRO_BATCH[1]))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timings(budgets: list[int], layers: int, repeats: int, results: dict) -> None:
    runners = [Runner("vanilla", layers), Runner("pc_amortized", layers)]
    results["small_model_parameters"] = runners[0].small_parameters
    results["base_parameters"] = runners[0].base_parameters
    for runner in runners:
        runner.step(1)  # warm-up: allocator, optimizer state, first materialisation
    for tokens in budgets:
        micro_batches = tokens // (MICRO_BATCH[0] * MICRO_BATCH[1])
        times: dict[str, list[float]] = {r.method: [] for r in runners}
        while all(len(t) < repeats and sum(t) < TIME_CAP for t in times.values()):
            for runner in runners:
                times[runner.method].append(runner.step(micro_batches))
        for method, measured in times.items():
            results["rows"].append(
                {
                    "method": method,
                    "tokens_per_step": tokens,
                    "micro_batches": micro_batches,
                    "step_seconds": statistics.median(measured),
                    "step_seconds_all": measured,
                }
            )
            print(json.dumps(results["rows"][-1]), flush=True)
        write(results)
    del runners
    naive = Runner("pc_naive", layers)
    naive.step(1)
    tokens = min(budgets)
    seconds = naive.step(tokens // (MICRO_BATCH[0] * MICRO_BATCH[1]))
    results["rows"].append(
        {"method": "pc_naive", "tokens_per_step": tokens, "step_seconds": seconds, "step_seconds_all": [seconds]}
    )
    write(results)


def write(results: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "train_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = {(r["method"], r["tokens_per_step"]): r for r in results["rows"]}
    memory = results.get("peak_rss_gib", {})
    lines = [
        "# Projected compression step time vs plain training of the same-size model",
        "",
        f"{results['model']}: {results.get('base_parameters', 0):,} -> {results.get('small_model_parameters', 0):,} "
        f"parameters. {results['machine']}, {results['date']}. Both models in one process, steps alternating; "
        f"median of up to {results['repeats']} steps (fewer past {TIME_CAP:.0f} s) after a warm-up micro-batch; "
        f"micro-batches of {MICRO_BATCH[0]}x{MICRO_BATCH[1]} tokens; AdamW, clipping.",
        "",
        "| tokens/step | vanilla step (s) | PC amortised step (s) | PC / vanilla | PC naive / vanilla |",
        "|---|---|---|---|---|",
    ]
    for tokens in results["tokens"]:
        v, p, n = rows.get(("vanilla", tokens)), rows.get(("pc_amortized", tokens)), rows.get(("pc_naive", tokens))
        if not (v and p):
            continue
        naive = f"{n['step_seconds'] / v['step_seconds']:.3f}" if n else ""
        lines.append(
            f"| {tokens:,} | {v['step_seconds']:.1f} | {p['step_seconds']:.1f} | "
            f"{p['step_seconds'] / v['step_seconds']:.3f} | {naive} |"
        )
    if memory:
        lines += [
            "",
            f"Peak resident memory, one step at {min(results['tokens']):,} tokens: "
            + ", ".join(f"{m} {gib:.2f} GiB" for m, gib in memory.items())
            + " (the PC process also holds the frozen base model and P/A with their AdamW state).",
        ]
    (OUT / "train_speed.md").write_text("\n".join(lines) + "\n")
    tokens = [t for t in results["tokens"] if ("vanilla", t) in rows and ("pc_amortized", t) in rows]
    plt = pyplot() if tokens else None
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        tokens,
        [rows[("pc_amortized", t)]["step_seconds"] / rows[("vanilla", t)]["step_seconds"] for t in tokens],
        "o-",
        label="PC amortised / vanilla",
    )
    ax.axhline(1.15, color="gray", ls="--", label="goal 1.15")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens per optimizer step")
    ax.set_ylabel("step time ratio")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "train_speed.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[8192, 32768, 131072])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # child process: one method's peak memory
    args = parser.parse_args()
    if args.memory_of:
        print(peak_memory(args.memory_of, min(args.tokens), args.layers))
        return
    results = {
        "model": f"Llama, hidden 1024, {args.layers} layers, vocabulary 8192, 50% target",
        "machine": describe(),
        "date": date.today().isoformat(),
        "tokens": args.tokens,
        "repeats": args.repeats,
        "rows": [],
        "peak_rss_gib": {},
    }
    for method in ("vanilla", "pc_amortized"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--layers",
                str(args.layers),
                "--tokens",
                str(min(args.tokens)),
                "--memory-of",
                method,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results["peak_rss_gib"][method] = float(out.strip().splitlines()[-1])
    timings(args.tokens, args.layers, args.repeats, results)


if __name__ == "__main__":
    main()
