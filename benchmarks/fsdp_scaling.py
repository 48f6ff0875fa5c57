"""Memory per rank and step time of projected compression: one process vs two, DDP vs FSDP2.

    python benchmarks/fsdp_scaling.py [--layers 8] [--steps 3] [--device cpu|cuda]

A Llama of hidden 1024, intermediate 2816, 16 heads (4 KV heads), vocabulary 32000 and ``--layers``
layers (about 156M parameters at 8 layers), compressed to 50% of its non-embedding parameters, trained
with the amortised step (W_c once per step, two micro-batches, one gradient push, clipping, AdamW):

* ``one``: one process, the global batch (2 micro-batches of 4 sequences of 128 tokens);
* ``ddp``: two processes, each with half of every micro-batch, the model replicated and wrapped in
  ``DistributedDataParallel`` (what ``ProjCompTrainer`` under ``accelerate launch --multi_gpu`` does);
* ``fsdp2``: two processes, half a micro-batch each, base, P, A and AdamW state sharded per decoder
  layer by :func:`hf_projcomp.distributed.shard`.

Every configuration runs in fresh processes (torchrun, gloo on CPU, nccl on CUDA): build, one warm-up
step (allocates AdamW state), then ``--steps`` measured steps. Per rank: peak resident memory over the
measured steps (``malloc_trim`` and a ``/proc/self/clear_refs`` reset after warm-up; CUDA: peak
allocated), and the bytes of
the tensors the rank holds (parameters, gradients, optimizer state; a shard counts its local part).
Step time is the median measured step, reported as a ratio to ``one`` measured in the same run.
Writes ``benchmarks/results/fsdp_scaling.{json,md}``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import date
from pathlib import Path

import torch
from machine import describe  # benchmarks/machine.py
from transformers import LlamaConfig, LlamaForCausalLM

OUT = Path(__file__).resolve().parent / "results"
MODES = ("one", "ddp", "fsdp2")
GLOBAL_BATCH, SEQ, MICRO = 4, 128, 2


def _peak_reset(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        # Return freed heap to the OS first: glibc keeps what building the full model (before sharding)
        # and the warm-up step freed, and the peak counter restarts from the current resident set.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")


def _peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _held_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    # By storage, not by object: a shard's to_local() is a new object each call, and tied tensors share one.
    seen, total = set(), 0
    tensors = list(model.parameters()) + [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    for t in tensors:
        storage = _local(t).untyped_storage()
        if storage.data_ptr() not in seen and storage.nbytes():
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def worker(mode: str, layers: int, steps: int, device: str, out: Path) -> None:
    from hf_projcomp import ProjCompConfig, get_projcomp_model
    from hf_projcomp.distributed import clip_grad_norm_, close_process_group, shard
    from hf_projcomp.projection import unwrap

    distributed = mode != "one"
    if distributed:
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    if device == "cuda":
        torch.cuda.set_device(rank)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=1024,
        intermediate_size=2816,
        num_attention_heads=16,
        num_key_value_heads=4,
        num_hidden_layers=layers,
        vocab_size=32000,
        max_position_embeddings=512,
    )
    base = LlamaForCausalLM(config).to(device)
    base_params = sum(p.numel() for p in base.parameters())
    model = get_projcomp_model(base, ProjCompConfig(target_params=0.5, importance="magnitude"), progress=False)
    pc = unwrap(model)
    runner = model
    if mode == "fsdp2":
        shard(model)
    else:
        pc.set_amortized(True)
        if mode == "ddp":  # P and A get their gradients at the push, outside DDP's backward
            runner = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    pc.train()
    optimizer = torch.optim.AdamW(pc.trainable_parameters(), lr=1e-4)
    share = GLOBAL_BATCH // world
    data = torch.randint(0, 32000, (steps + 1, MICRO, GLOBAL_BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    times = []
    for step in range(steps + 1):
        if step == 1:
            if distributed:
                torch.distributed.barrier()
            _peak_reset(device)
        start = time.perf_counter()
        for micro in range(MICRO):
            ids = data[step, micro, rank * share : (rank + 1) * share].to(device)
            sync = mode != "ddp" or micro == MICRO - 1
            context = runner.no_sync() if not sync else nullcontext()
            with context:
                (runner(input_ids=ids, labels=ids).loss / MICRO).backward()
        pc.push_gradients()
        clip_grad_norm_(model, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= 1:
            times.append(time.perf_counter() - start)
    result = {
        "mode": mode,
        "rank": rank,
        "world": world,
        "peak_bytes": _peak_bytes(device),
        "held_bytes": _held_bytes(pc, optimizer),
        "step_s": statistics.median(times),
        "base_params": base_params,
    }
    (out / f"{mode}-rank{rank}.json").write_text(json.dumps(result))
    if distributed:
        close_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)  # the workers' per-rank files
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.layers, args.steps, args.device, args.out)
        return
    args.out = args.out or Path(tempfile.mkdtemp(prefix="fsdp_scaling_"))
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [
        str(Path(__file__).resolve()),
        "--layers",
        str(args.layers),
        "--steps",
        str(args.steps),
        "--device",
        args.device,
        "--out",
        str(args.out),
    ]
    for mode in MODES:
        launcher = (
            [sys.executable]
            if mode == "one"
            else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        )
        print(f"running {mode}...", flush=True)
        subprocess.run([*launcher, *common, "--worker", mode], check=True, env=env)
    rows = [
        json.loads((args.out / f"{mode}-rank{r}.json").read_text())
        for mode in MODES
        for r in range(1 if mode == "one" else 2)
    ]
    write_results(rows, args)


def write_results(rows: list[dict], args: argparse.Namespace) -> None:
    one = next(r for r in rows if r["mode"] == "one")
    meta = {
        "date": str(date.today()),
        "machine": describe(args.device),
        "device": args.device,
        "layers": args.layers,
        "steps": args.steps,
        "base_params": one["base_params"],
    }
    (OUT / "fsdp_scaling.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        "# Projected compression: memory per rank and step time, 1 vs 2 processes, DDP vs FSDP2",
        "",
        f"{meta['date']}, {meta['machine']}, device {args.device}, "
        f"one thread per process. Llama 1024/2816, {args.layers} layers, vocabulary 32000 "
        f"({one['base_params'] / 1e6:.0f}M parameters), target 50% of the non-embedding parameters; "
        f"amortised step, global batch {GLOBAL_BATCH}×{SEQ} tokens in {MICRO} micro-batches; "
        f"median of {args.steps} steps after one warm-up. `python benchmarks/fsdp_scaling.py`.",
        "",
        "| run | rank | held tensors (MiB) | peak memory (MiB) | step time vs one process |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['rank']} | {r['held_bytes'] / 2**20:,.0f} | {r['peak_bytes'] / 2**20:,.0f} "
            f"| {r['step_s'] / one['step_s']:.2f} |"
        )
    lines += [
        "",
        "Held tensors: parameters, gradients and AdamW state the rank keeps (a shard counts its local part). "
        "Peak memory: the process's peak resident set over the measured steps (CUDA: peak allocated), which "
        "also holds activations, the step's W_c and its saved products, and the Python/torch runtime.",
    ]
    (OUT / "fsdp_scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
