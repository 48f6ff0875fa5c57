"""Recovery after width pruning: four methods × token budgets × seeds on SmolLM2-135M (not a unit test).

    python benchmarks/recovery_curve.py [--target 0.5] [--budgets 8192 16384 32768 65536] [--seeds 0 1 2] [--resume]

Every method starts from the same selection (COMPACT's split search at ``--target`` of the parameters,
``refit_ffn=False`` so that step 0 is the plain hard-pruned model for all four) and trains on the same
256-token blocks of the bundled calibration text in the order the seed gives:

- ``retrain``: the hard-pruned vanilla model, every weight, cross-entropy;
- ``retrain+kd``: the same, on KL(base ‖ pruned) (α = 1: the base's next-token distribution over the kept
  vocabulary, what ``projcomp compress --distill-tokens`` trains);
- ``pc``: projected compression (P, A and norms; the base frozen), cross-entropy;
- ``pc+kd``: projected compression on KL(base ‖ projected), α = 1.

Declared before any run (benchmarks/README.md, "Protocol"):

- budgets ``--budgets`` (8× from the smallest to the largest), a constant learning rate after 2 warm-up
  steps, so a budget is a prefix of the longest run and one run per (method, seed) gives every budget;
- learning rates chosen on **dev** at the smallest budget, seed 0: ``retrain``/``retrain+kd`` over
  ``LR_GRID``; ``pc``/``pc+kd`` take the LR of their retraining counterpart for A and the norms (they play
  the small model's weights) and choose P's over ``P_LR_GRID``; a grid whose best point is at an edge is
  extended by one point (×10) beyond that edge, at most ``MAX_EXTENSIONS`` times, so the
  optimum is interior or the extension limit is reported;
- **test** (WikiText-2 raw test, first 60,000 characters) is scored once at the end of each seed run and
  for the fixed references (base, training-free COMPACT, step 0); it never chooses anything.

Reports dev bits per byte at every budget, the paired margins pc − retrain and pc+kd − retrain+kd (mean ±
sd over seeds), the fraction of the step-0 loss recovered, and wall seconds per 1,000 training tokens
(evaluation excluded) as a ratio to ``retrain``. Writes ``benchmarks/results/recovery_curve[_<target %>].{json,md,png}``
after every run (``--resume`` keeps finished runs); the selection is cached in
``benchmarks/results/.runs/recovery-selection-<target>``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from datetime import date
from pathlib import Path

from data import TEST, data_file, dev_text, ood_dev_text  # benchmarks/data.py
from datasets import Dataset
from machine import describe  # benchmarks/machine.py
from peft import PeftModel
from plotting import pyplot  # benchmarks/plotting.py
from trainers import BudgetEval, constant_lr_arguments  # benchmarks/trainers.py
from transformers import AutoTokenizer, default_data_collator

from hf_projcomp import ProjCompConfig, ProjCompTrainer, get_projcomp_model, hard_prune
from hf_projcomp.blocks import text_blocks
from hf_projcomp.compact import compact_prune
from hf_projcomp.demo import load_packaged_model
from hf_projcomp.evaluate import bits_per_byte, load_text
from hf_projcomp.importance.calibration import iter_calibration_texts
from hf_projcomp.model_ids import SMOLLM2
from hf_projcomp.projection import unwrap
from hf_projcomp.texts import CALIBRATION, bundled_text
from hf_projcomp.training import DistillationTrainer, Teacher

OUT = Path(__file__).resolve().parent / "results"
RUNS = OUT / ".runs"
NAME = "recovery_curve"


def name_of(target: float) -> str:
    """The results file's name: ``recovery_curve`` at the default 50%, ``recovery_curve_75`` at 75%..."""
    return NAME if target == 0.5 else f"{NAME}_{round(target * 100)}"


SEQUENCE, MICRO_BATCH, ACCUMULATION = 256, 4, 2
TOKENS_PER_STEP = SEQUENCE * MICRO_BATCH * ACCUMULATION
METHODS = ("retrain", "retrain+kd", "pc", "pc+kd")
LR_GRID = (1e-4, 3e-4, 1e-3)
P_LR_GRID = (1e-5, 1e-4, 1e-3)
MAX_EXTENSIONS = 2
KD_ALPHA = 1.0
EVAL_CHARS, FINAL_CHARS = 20_000, 60_000
# dev_budget: the dev text scored along the runs, so the fraction recovered compares like with like.
REFERENCE_TEXTS = ("dev", "ood", "test", "dev_budget")


def selection(base, tokenizer, target: float) -> tuple[Path, float]:
    """The initial adapter's directory (COMPACT's split at ``target``, no refit) and the seconds it took;
    cached, as every run starts from it."""
    cache = RUNS / f"recovery-selection-{target:g}"
    if not (cache / "selection.json").is_file():
        start = time.perf_counter()
        config = ProjCompConfig(target_params=target, importance="compact")
        init = get_projcomp_model(
            base, config, calibration_data=str(bundled_text(CALIBRATION, path=True)), tokenizer=tokenizer
        )
        seconds = time.perf_counter() - start
        init.save_pretrained(cache)  # the selections and the pruned tokenizer with it
        (cache / "selection.json").write_text(json.dumps({"target": target, "seconds": seconds}))
    return cache, json.loads((cache / "selection.json").read_text())["seconds"]


def references(base, tokenizer, kept, small_tok, target: float, texts: dict) -> dict:
    """Scores of the fixed references: the base, step 0 (the hard-pruned selection) and training-free
    COMPACT at ``target`` (with its down_proj refit, what ``projcomp compress`` writes)."""
    step0 = hard_prune(base, kept.hidden, kept.ffn, kept.vocab)
    compact, compact_tok, _ = compact_prune(
        base, tokenizer, str(bundled_text(CALIBRATION, path=True)), target_params=target, progress=False
    )
    rows = {}
    for name, model, tok in (
        ("base", base, tokenizer),
        ("step 0", step0, small_tok),
        ("COMPACT", compact, compact_tok),
    ):
        rows[name] = {k: bits_per_byte(model, tok, texts[k], progress=False) for k in REFERENCE_TEXTS}
        rows[name]["parameters"] = model.num_parameters()
        print(name, rows[name], flush=True)
    return rows


class Runner:
    """Trains one (method, LR, P LR, seed) and records it in ``results`` (skipping finished ones)."""

    def __init__(self, base, adapter: Path, kept, small_tok, data: Dataset, texts: dict, results: dict) -> None:
        self.base, self.adapter, self.kept, self.small_tok = base, adapter, kept, small_tok
        self.data, self.texts, self.results = data, texts, results

    def _trainer(self, method: str, lr: float, plr: float | None, seed: int, steps: int):
        training = constant_lr_arguments(str(RUNS / "trainer"), MICRO_BATCH, ACCUMULATION, steps, lr, seed)
        alpha = KD_ALPHA if method.endswith("+kd") else 0.0
        common = {"args": training, "train_dataset": self.data, "data_collator": default_data_collator}
        if method.startswith("pc"):
            pc = PeftModel.from_pretrained(self.base, self.adapter, is_trainable=True)
            trainer = ProjCompTrainer(model=pc, distill_alpha=alpha, projection_learning_rate=plr, **common)
            return trainer, pc.merge_and_unload
        kept = self.kept
        model = hard_prune(self.base, kept.hidden, kept.ffn, kept.vocab).train().requires_grad_(True)
        teacher = Teacher(self.base, kept.vocab.tolist()) if alpha else None
        trainer = DistillationTrainer(model=model, teacher=teacher, distill_alpha=alpha, **common)
        return trainer, model.eval

    def run(self, phase: str, method: str, lr: float, plr: float | None, seed: int, budgets: list[int]) -> dict:
        key = {"phase": phase, "method": method, "learning_rate": lr, "projection_learning_rate": plr, "seed": seed}
        key["tokens"] = budgets[-1]
        for row in self.results["runs"]:
            if all(row.get(k) == v for k, v in key.items()):
                return row
        trainer, trained = self._trainer(method, lr, plr, seed, budgets[-1] // TOKENS_PER_STEP)
        eval_seconds = []

        def evaluate() -> dict:
            start = time.perf_counter()
            score = bits_per_byte(trained(), self.small_tok, self.texts["dev_budget"], progress=False)
            eval_seconds.append(time.perf_counter() - start)
            return {"dev": score}

        callback = BudgetEval(evaluate, budgets, TOKENS_PER_STEP)
        trainer.add_callback(callback)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start - sum(eval_seconds)
        small = trained()
        row = {**key, "train_seconds": seconds, "budgets": callback.points}
        # test and the out-of-domain text only for the reported (seed) runs, never for a choice
        names = ("dev", "ood", "test") if phase == "seed" else ("dev",)
        row["final"] = {k: bits_per_byte(small, self.small_tok, self.texts[k], progress=False) for k in names}
        print({k: v for k, v in row.items()}, flush=True)
        self.results["runs"].append(row)
        write(self.results)
        return row


def choose(runner: Runner, method: str, grid: tuple[float, ...], budgets: list[int], fixed: float | None) -> dict:
    """Dev's pick over ``grid`` (of the LR, or of P's LR when ``fixed`` is A's LR), extended past an edge
    optimum at most ``MAX_EXTENSIONS`` times; returns the choice with the grid actually run."""
    points = sorted(grid)
    smallest = budgets[:1]

    def score(value: float) -> float:
        lr, plr = (fixed, value) if fixed is not None else (value, None)
        return runner.run("grid", method, lr, plr, 0, smallest)["final"]["dev"]

    for extension in range(MAX_EXTENSIONS + 1):
        scores = {p: score(p) for p in points}
        best = min(scores, key=scores.get)
        if points[0] < best < points[-1] or extension == MAX_EXTENSIONS:
            break
        points.insert(0, best / 10) if best == points[0] else points.append(best * 10)
    return {"value": best, "grid": points, "interior": points[0] < best < points[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.5, help="fraction of SmolLM2-135M's parameters kept")
    parser.add_argument("--budgets", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--resume", action="store_true", help="keep the runs already in the results file")
    args = parser.parse_args()
    budgets = sorted({max(1, b // TOKENS_PER_STEP) * TOKENS_PER_STEP for b in args.budgets})
    base, tokenizer = load_packaged_model(SMOLLM2)
    adapter, selection_seconds = selection(base, tokenizer, args.target)
    small_tok = AutoTokenizer.from_pretrained(adapter)
    kept = unwrap(PeftModel.from_pretrained(base, adapter)).selection()
    texts = {
        "dev_budget": dev_text(EVAL_CHARS),
        "dev": dev_text(FINAL_CHARS),
        "ood": ood_dev_text(),
        "test": load_text(data_file(TEST), max_chars=FINAL_CHARS),
    }
    calibration = iter_calibration_texts(bundled_text(CALIBRATION, path=True))
    blocks = text_blocks(small_tok, calibration, SEQUENCE, add_special_tokens=True, max_tokens=budgets[-1] + SEQUENCE)
    if len(blocks) * SEQUENCE < budgets[-1]:
        raise SystemExit(f"the calibration text has {len(blocks) * SEQUENCE:,} tokens in blocks, fewer than asked")
    data = Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    previous = OUT / f"{name_of(args.target)}.json"
    results = json.loads(previous.read_text()) if args.resume and previous.is_file() else None
    if results is None:
        results = {
            "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to fp32)",
            "machine": describe(),
            "date": date.today().isoformat(),
            "declared": {
                "target": args.target,
                "budgets": budgets,
                "seeds": args.seeds,
                "lr_grid": LR_GRID,
                "p_lr_grid": P_LR_GRID,
                "kd_alpha": KD_ALPHA,
                "tokens_per_step": TOKENS_PER_STEP,
            },
            "selection_seconds": selection_seconds,
            "target_config": {
                "hidden_size": len(kept.hidden),
                "intermediate_size": len(kept.ffn[0]),
                "vocab_size": len(kept.vocab),
            },
            "references": references(base, tokenizer, kept, small_tok, args.target, texts),
            "runs": [],
        }
        write(results)
    if any(k not in results["references"]["base"] for k in REFERENCE_TEXTS):  # a file from before dev_budget
        results["references"] = references(base, tokenizer, kept, small_tok, results["declared"]["target"], texts)
        write(results)
    runner = Runner(base, adapter, kept, small_tok, data, texts, results)
    chosen = {}
    for method in ("retrain", "retrain+kd"):
        chosen[method] = choose(runner, method, LR_GRID, budgets, None)
    for method, counterpart in (("pc", "retrain"), ("pc+kd", "retrain+kd")):
        chosen[method] = {
            "lr": chosen[counterpart]["value"],
            **choose(runner, method, P_LR_GRID, budgets, chosen[counterpart]["value"]),
        }
    results["chosen"] = chosen
    write(results)
    for seed in args.seeds:
        for method in METHODS:
            c = chosen[method]
            lr, plr = (c["lr"], c["value"]) if method.startswith("pc") else (c["value"], None)
            runner.run("seed", method, lr, plr, seed, budgets)
    write(results)


def spread(values: list[float]) -> str:
    """Mean ± sample standard deviation of ``values``."""
    if len(values) < 2:
        return f"{values[0]:+.4f} (one seed)" if values else "–"
    return f"{statistics.mean(values):+.4f} ± {statistics.stdev(values):.4f}"


def write(results: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    name = name_of(results["declared"]["target"])
    (OUT / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (OUT / f"{name}.md").write_text("\n".join(markdown(results)) + "\n")
    plot(results)


def markdown(results: dict) -> list[str]:
    ref, d = results["references"], results["declared"]
    t = results["target_config"]
    lines = [
        f"# Recovery after width pruning: four methods, {results['model']}",
        "",
        f"{results['machine']}, {results['date']}. `python benchmarks/recovery_curve.py`. Target {d['target']:.0%} of "
        f"the parameters: COMPACT's split (d_model {t['hidden_size']}, d_ff {t['intermediate_size']}, vocabulary "
        f"{t['vocab_size']:,}; {ref['step 0']['parameters']:,} parameters), no down_proj refit, so every method starts "
        f"from the same hard-pruned model. {d['tokens_per_step']:,} tokens per optimizer step (256-token blocks of the "
        "bundled calibration text, the seed orders them), constant LR after 2 warm-up steps; KD: "
        f"α = {d['kd_alpha']:g} (KL to the base over the kept vocabulary). Declared before the first run: budgets "
        f"{', '.join(f'{b:,}' for b in d['budgets'])}, seeds {d['seeds']}, LR grid {list(d['lr_grid'])}, P LR grid "
        f"{list(d['p_lr_grid'])} (extended past an edge optimum). Bits per byte, 1024-token windows; **dev**: "
        "WikiText-2 validation after the calibration text (20,000 characters along the runs, 60,000 at the end), "
        "**OOD**: Python source, **test**: WikiText-2 raw test, first 60,000 characters, scored once per reported run.",
        "",
        *[f"- {note}" for note in results.get("notes", [])],
        *([""] if results.get("notes") else []),
        "## Fixed references",
        "",
        "| model | parameters | dev (20,000 chars, as along the runs) | dev | OOD dev | test |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in ref.items():
        short = f"{r['dev_budget']:.4f}" if "dev_budget" in r else "–"
        lines.append(f"| {name} | {r['parameters']:,} | {short} | {r['dev']:.4f} | {r['ood']:.4f} | {r['test']:.4f} |")
    grid = [r for r in results["runs"] if r["phase"] == "grid"]
    chosen = results.get("chosen", {})
    lines += [
        "",
        f"## Learning rates, chosen on dev at {d['budgets'][0]:,} tokens, seed 0",
        "",
        "| method | LR | P LR | dev (60,000 chars) | chosen |",
        "|---|---|---|---|---|",
    ]
    for r in grid:
        c = chosen.get(r["method"], {})
        pick = r["projection_learning_rate"] if r["method"].startswith("pc") else r["learning_rate"]
        mark = "**yes**" if c.get("value") == pick else ""
        plr = "" if r["projection_learning_rate"] is None else f"{r['projection_learning_rate']:g}"
        lines.append(f"| {r['method']} | {r['learning_rate']:g} | {plr} | {r['final']['dev']:.4f} | {mark} |")
    edge = [m for m, c in chosen.items() if not c.get("interior", True)]
    if edge:
        lines.append(f"\nAt the grid's edge after {MAX_EXTENSIONS} extensions: {', '.join(edge)}.")
    lines += seed_tables(results)
    return lines


def by_seed(results: dict) -> dict:
    seeds = [r for r in results["runs"] if r["phase"] == "seed"]
    return {m: {r["seed"]: r for r in seeds if r["method"] == m} for m in METHODS}


def dev_at(row: dict) -> dict[int, float]:
    return {p["tokens"]: p["dev"] for p in row["budgets"]}


def seed_tables(results: dict) -> list[str]:
    runs, budgets = by_seed(results), results["declared"]["budgets"]
    if not any(runs.values()):
        return []
    ref = results["references"]
    key = "dev_budget" if "dev_budget" in ref["base"] else "dev"
    step0, base = ref["step 0"][key], ref["base"][key]
    head = "| method | " + " | ".join(f"dev @ {b:,}" for b in budgets) + " | dev 60k | OOD | test |"
    lines = [
        "",
        "## Dev bits per byte along the runs (mean ± sd over seeds)",
        "",
        head,
        "|---" * (len(budgets) + 4) + "|",
    ]
    for method, rows in runs.items():
        if not rows:
            continue
        cells = [spread([dev_at(r).get(b, math.nan) for r in rows.values()]).lstrip("+") for b in budgets]
        finals = [spread([r["final"][k] for r in rows.values()]).lstrip("+") for k in ("dev", "ood", "test")]
        lines.append(f"| {method} ({len(rows)} seeds) | " + " | ".join(cells + finals) + " |")
    lines += ["", "## Paired margins (same seed, same batches; negative: the first is better)", ""]
    lines += [
        "| pair | " + " | ".join(f"dev @ {b:,}" for b in budgets) + " | test |",
        "|---" * (len(budgets) + 2) + "|",
    ]
    for a, b in (("pc", "retrain"), ("pc+kd", "retrain+kd"), ("retrain+kd", "retrain"), ("pc+kd", "retrain")):
        seeds = sorted(set(runs[a]) & set(runs[b]))
        if not seeds:
            continue
        cells = [spread([dev_at(runs[a][s])[t] - dev_at(runs[b][s])[t] for s in seeds]) for t in budgets]
        test = spread([runs[a][s]["final"]["test"] - runs[b][s]["final"]["test"] for s in seeds])
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + f" | {test} |")
    lines += [
        "",
        f"## Fraction of the step-0 dev loss recovered ((step 0 − run) / (step 0 − base) on the dev text of the runs; "
        f"step 0 {step0:.4f}, base {base:.4f}), and training cost",
        "",
        "| method | " + " | ".join(f"@ {b:,}" for b in budgets) + " | s per 1k tokens (median) | ratio to retrain |",
        "|---" * (len(budgets) + 3) + "|",
    ]
    # The median over seeds: one run beside other work on the machine does not move it.
    cost = {
        m: statistics.median(r["train_seconds"] / r["tokens"] * 1000 for r in rows.values())
        for m, rows in runs.items()
        if rows
    }
    for method, rows in runs.items():
        if not rows:
            continue
        fractions = [statistics.mean((step0 - dev_at(r)[t]) / (step0 - base) for r in rows.values()) for t in budgets]
        ratio = f"{cost[method] / cost['retrain']:.2f}" if "retrain" in cost else "–"
        lines.append(
            f"| {method} | " + " | ".join(f"{f:.1%}" for f in fractions) + f" | {cost[method]:.1f} | {ratio} |"
        )
    return lines


def plot(results: dict) -> None:
    plt = pyplot()
    runs = by_seed(results)
    if plt is None or not any(runs.values()):
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    budgets = results["declared"]["budgets"]
    for method, rows in runs.items():
        if rows:
            means = [statistics.mean(dev_at(r)[b] for r in rows.values()) for b in budgets]
            ax.plot(budgets, means, marker="o", label=f"{method} ({len(rows)} seeds)")
    ref = results["references"]
    key = "dev_budget" if "dev_budget" in ref["base"] else "dev"
    ax.axhline(ref["base"][key], color="gray", linestyle="--", label="base")
    ax.axhline(ref["COMPACT"][key], color="gray", linestyle=":", label="COMPACT, training-free")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("dev bits per byte (20,000 characters)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / f"{name_of(results['declared']['target'])}.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
