"""Peak memory of one projected-compression training step: float32 base vs bfloat16 base.

    python benchmarks/train_memory.py [--layers 8] [--tokens 256]

Does ``base_dtype="bfloat16"`` lower peak training memory? It halves the frozen base, but a step also
computes every ``W_c = P_out · W · P_in + A`` in float32, and autograd (or ``torch.func.vjp``) saves
the float32 cast of every ``W`` for the backward pass, so until P and A get their gradients a full
float32 copy of the base may be alive again. ``project_weight`` now saves the base weight as given and
casts again in backward; the implementation it replaced is kept here (``legacy``) to measure both.

A Llama of hidden 2048, intermediate 5632, 16 heads (4 KV heads), vocabulary 32000 and ``--layers``
layers (about 0.5B parameters at 8 layers), compressed to 50% of its non-embedding parameters. Each
configuration runs in a fresh process: build, one warm-up step (allocates AdamW state), then the
measured step with the peak-RSS counter reset (``/proc/self/clear_refs``). Steps are the amortised one
(``ProjCompTrainer``: W_c once, backward, one gradient push, clip, AdamW) and the plain autograd one (a
plain ``Trainer``). Writes ``benchmarks/results/train_memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import torch
from machine import describe  # benchmarks/machine.py
from transformers import LlamaConfig, LlamaForCausalLM

from hf_projcomp import ProjCompConfig, get_projcomp_model
from hf_projcomp.projection import layer as layer_module
from hf_projcomp.projection import unwrap

OUT = Path(__file__).resolve().parent / "results"
CONFIGS = [  # (base dtype, step, implementation)
    ("float32", "amortized", "current"),
    ("bfloat16", "amortized", "current"),
    ("bfloat16", "amortized", "legacy"),
    ("float32", "autograd", "current"),
    ("bfloat16", "autograd", "current"),
    ("bfloat16", "autograd", "legacy"),
]


def legacy_project_weight(weight, p_in, p_out, a, scale=1.0):
    """The projected weight as computed before this benchmark's change: plain autograd through a float32
    cast of ``W`` (which autograd then saves for the backward pass)."""
    chunks = p_out.shape[0] if p_out is not None else 1
    w = weight.to(a.dtype).reshape(chunks, -1, weight.shape[-1])
    if p_out is not None and p_in is not None:
        w = (p_out @ w) @ p_in if layer_module._cheaper_left_first(p_in, p_out) else p_out @ (w @ p_in)
    elif p_out is not None:
        w = p_out @ w
    elif p_in is not None:
        w = w @ p_in
    w = w.reshape(a.shape)
    return a + (w * scale if scale != 1.0 else w)


def legacy_forward_with_vjp(self):
    params = {name: p.detach() for name, p in self._trainable().items()}
    weight, vjp = torch.func.vjp(self._project, params)
    return weight.detach(), lambda grad: vjp(grad)[0]


def memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(base_dtype: str, step: str, implementation: str, layers: int, tokens: int) -> dict:
    """One configuration, in this process."""
    if implementation == "legacy":
        layer_module.project_weight = legacy_project_weight
        layer_module.Projection.forward_with_vjp = legacy_forward_with_vjp
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=128,
        vocab_size=32000,
        max_position_embeddings=2048,
    )
    base = LlamaForCausalLM(config)
    pc = get_projcomp_model(
        base, ProjCompConfig(target_params=0.5, base_dtype=base_dtype, importance="magnitude"), progress=False
    )
    pc.set_amortized(step == "amortized")
    pc.train()
    params = pc.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    batch = torch.randint(0, 32000, (1, tokens), generator=torch.Generator().manual_seed(0))

    def one_step() -> None:
        pc(input_ids=batch, labels=batch).loss.backward()
        pc.push_gradients()  # a no-op for the autograd step
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    one_step()
    gc.collect()
    steady = memory_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM, the peak resident set
    one_step()
    peak = memory_kib("VmHWM")
    base_bytes = sum(p.numel() * p.element_size() for p in unwrap(pc).model.parameters())
    return {
        "base_dtype": base_dtype,
        "step": step,
        "implementation": implementation,
        "base_gib": base_bytes / 2**30,
        "steady_rss_gib": steady / 2**20,
        "peak_rss_gib": peak / 2**20,
        "base_parameters": base.num_parameters(),
        "target_parameters": unwrap(pc).compressed.num_parameters(),
    }


def write(results: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "train_memory.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = results["rows"]
    first = rows[0]
    lines = [
        "# Peak memory of one training step: float32 vs bfloat16 base",
        "",
        f"{results['model']}: {first['base_parameters']:,} -> {first['target_parameters']:,} parameters, "
        f"one micro-batch of {results['tokens']} tokens. {results['machine']}, {results['date']}. "
        "Each row is a fresh process: build, warm-up step, then the measured step; steady = RSS before it, "
        "peak = highest RSS during it. `legacy`: the projected weight before this change (autograd / "
        "torch.func.vjp through a float32 cast of the base weight).",
        "",
        "| step | base dtype | implementation | frozen base (GiB) | steady RSS (GiB) | peak RSS in step (GiB) | "
        "peak - steady (GiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['step']} | {r['base_dtype']} | {r['implementation']} | {r['base_gib']:.2f} | "
            f"{r['steady_rss_gib']:.2f} | {r['peak_rss_gib']:.2f} | "
            f"{r['peak_rss_gib'] - r['steady_rss_gib']:.2f} |"
        )
    (OUT / "train_memory.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # child: base dtype, step, implementation
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, layers=args.layers, tokens=args.tokens)))
        return
    results = {
        "model": f"Llama, hidden 2048, {args.layers} layers, vocabulary 32000, 50% target",
        "machine": describe(),
        "date": date.today().isoformat(),
        "tokens": args.tokens,
        "rows": [],
    }
    for config in CONFIGS:
        run = subprocess.run(
            [sys.executable, __file__, "--layers", str(args.layers), "--tokens", str(args.tokens), "--one", *config],
            check=True,
            capture_output=True,
            text=True,
        )
        results["rows"].append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(json.dumps(results["rows"][-1]), flush=True)
        write(results)


if __name__ == "__main__":
    main()
