"""COMPACT's FFN compensation on Gemma-3-270M, chosen on dev text (not a unit test).

    python benchmarks/ffn_refit_gemma.py

At the split COMPACT chose at 40% of parameters before the refit existed (full bundled calibration
text), one calibration pass (its Gram matrices kept); then, on the same pruned vocabulary:

- ``act2``: the common-act² channels, base values (the previous default);
- ``act2 + refit λ``: the same channels, down_proj refitted by least squares (ridge λ, a fraction of
  the kept channels' mean Gram diagonal; it damps the correction);
- ``obs + refit λ``: channels chosen by greedy Optimal Brain Surgeon over down_proj's columns on the
  same Gram matrices (the removals that the refit recovers best), then refitted.

Scored in bits per byte on dev text only: WikiText-2 validation after the calibration text (first
60,000 characters, 1024-token windows) and the out-of-domain Python dev text.
Writes ``benchmarks/results/ffn_refit_gemma.{json,md}`` after every row.
"""

from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path

import torch

import hf_projcomp.compact.prune as prune_module
from hf_projcomp.architectures import get_arch_spec
from hf_projcomp.compact import compact_prune
from hf_projcomp.compact.compensation import refit_down_proj
from hf_projcomp.demo import load_demo_model
from hf_projcomp.evaluate import bits_per_byte
from hf_projcomp.hard_pruning import hard_prune
from hf_projcomp.texts import CALIBRATION, bundled_text

from data import dev_text, ood_dev_text  # benchmarks/data.py
from machine import describe  # benchmarks/machine.py

OUT = Path(__file__).resolve().parent / "results"
SPLITS = {"40%": (24_625, 1792)}  # compact_gemma.md before the refit
VARIANTS = {  # name: (ranking, ridge or None for no refit)
    "act2": ("act2", None),
    "act2 + refit λ=0.001": ("act2", 1e-3),
    "act2 + refit λ=0.1": ("act2", 1e-1),
    "obs + refit λ=0.001": ("obs", 1e-3),
}


def main() -> None:
    model, tokenizer = load_demo_model(dtype=torch.float32)
    spec = get_arch_spec(model.config)
    texts = {"dev": dev_text(60_000), "ood": ood_dev_text()}
    base = {k: bits_per_byte(model, tokenizer, t, progress=False) for k, t in texts.items()}
    results = {"model": "Gemma-3-270M (GGUF Q4_K_M dequantized to float32)", "machine": describe(),
               "date": date.today().isoformat(), "base": base, "rows": []}
    grams = []
    # Keep compact_prune's Gram matrices and skip its own refit: every variant starts from the same pass.
    prune_module.refit_down_proj = lambda small, base_model, spec, g, ffn, *a, **k: grams.append(g)
    layers = model.get_submodule(spec.layers)
    for target, split in SPLITS.items():
        grams.clear()
        small, small_tok, result = compact_prune(model, tokenizer, str(bundled_text(CALIBRATION, path=True)),
                                                 split=split, progress=False, return_result=True)
        hidden = list(range(model.config.hidden_size))
        for name, (ranking, ridge) in VARIANTS.items():
            start = time.perf_counter()
            ffn = result.intermediate_indices
            if ranking == "obs":
                ffn = [obs_channels(layers[i].get_submodule(spec.ffn_down).weight, grams[0][i], len(c))
                       for i, c in enumerate(ffn)]
            candidate = hard_prune(model, hidden, ffn, result.kept_token_ids)
            if ridge is not None:
                refit_down_proj(candidate, model, spec, grams[0], ffn, ridge=ridge)
            row = {"target": target, "variant": name, "vocab_size": small.config.vocab_size,
                   "intermediate_size": small.config.intermediate_size, "seconds": time.perf_counter() - start,
                   **{k: bits_per_byte(candidate, small_tok, t, progress=False) for k, t in texts.items()}}
            print(json.dumps(row), flush=True)
            results["rows"].append(row)
            write(results)


def write(results: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ffn_refit_gemma.json").write_text(json.dumps(results, indent=2) + "\n")
    base = results["base"]
    lines = [
        f"# FFN compensation in COMPACT on {results['model']}, dev text only", "",
        f"{results['machine']}, {results['date']}. `python benchmarks/ffn_refit_gemma.py`. COMPACT at the split it "
        "chose at 40% before the refit existed, calibrated on the bundled text, one calibration pass; "
        f"Δ bits per byte against the base (dev {base['dev']:.4f}: WikiText-2 validation after the calibration "
        f"text, first 60,000 characters, 1024-token windows; OOD dev {base['ood']:.4f}: "
        "`benchmarks/data/ood_dev_python.txt`). λ: the refit's ridge as a fraction of the kept channels' mean "
        "Gram diagonal. Seconds: choosing and refitting the channels, and building the model (while other "
        "benchmarks shared the 2 cores). The greedy OBS ranking gains 0.011 in domain and loses 0.12 out of "
        "domain: it fits the calibration domain, so it stays here, not in the library.", "",
        "| target | vocab × d_ff | variant | Δ dev | Δ OOD dev | seconds |", "|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(f"| {r['target']} | {r['vocab_size']:,} × {r['intermediate_size']} | {r['variant']} | "
                     f"{r['dev'] - base['dev']:+.4f} | {r['ood'] - base['ood']:+.4f} | {r['seconds']:.0f} |")
    (OUT / "ffn_refit_gemma.md").write_text("\n".join(lines) + "\n")


@torch.no_grad()
def obs_channels(weight: torch.Tensor, gram: torch.Tensor, keep: int, damp: float = 1e-2, rounds: int = 8) -> torch.Tensor:
    """The ``keep`` d_ff channels to keep when each removal is followed by the least-squares refit
    (greedy Optimal Brain Surgeon over columns, as in ZipLM): in ``rounds`` steps, drop the channels
    whose removal raises ``Σ_t w_t ‖W h_t − W' h_t‖²`` least, ``‖W_j‖² / [H⁻¹]_jj`` with ``H = G + damp``,
    then refit the rest. Returns the kept indices, ascending."""
    h = gram.double()
    h = h + damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    inv = torch.linalg.inv(h)
    w = weight.double().to(h.device).clone()
    alive = torch.arange(h.shape[0], device=h.device)
    to_remove = h.shape[0] - keep
    for r in range(rounds):
        n = to_remove * (r + 1) // rounds - to_remove * r // rounds
        if n == 0:
            continue
        cost = w.pow(2).sum(0) / inv.diagonal()
        drop = torch.topk(cost, n, largest=False).indices
        stay = torch.ones(len(alive), dtype=torch.bool, device=h.device)
        stay[drop] = False
        inv_dd = inv[drop][:, drop]
        # OBS update of the kept columns, then the inverse of H restricted to them (Schur complement).
        w = w[:, stay] - w[:, drop] @ torch.linalg.solve(inv_dd, inv[drop][:, stay])
        inv = inv[stay][:, stay] - inv[stay][:, drop] @ torch.linalg.solve(inv_dd, inv[drop][:, stay])
        alive = alive[stay]
    return alive.sort().values


if __name__ == "__main__":
    main()
