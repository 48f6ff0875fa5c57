"""Projected compression vs hard-prune + retrain on Gemma-3-270M, same init, same tokens (not a unit test).

    python benchmarks/train_quality.py [--tokens 32768] [--probe-tokens 32768] [--seeds 0 1 2]
                                       [--pc-grid 1e-4:1e-5 ...] [--retrain-grid 1e-4 ...] [--resume]

Both methods start from the same selection: COMPACT's kept vocabulary (so training is affordable on
a CPU), d_model 640 -> 512 and d_ff 2048 -> 1024 ranked by common-token act², calibrated on the
bundled calibration text (WikiText-2 validation minus the dev tail). Then, on the same token blocks
of that text in the same order:

- ``pc``: ProjCompTrainer (P, A and norms train; the base stays frozen; W_c once per step). Its
  grid is (LR of A and the norms : LR of P); with P frozen it would be exactly ``retrain``;
- ``retrain``: the hard-pruned vanilla model, every weight trained with a plain ``Trainer``.

Protocol (benchmarks/README.md): each method's learning rates are chosen on **dev** text (WikiText-2
validation after the calibration text) with ``--probe-tokens`` of training and seed 0; the winners
then train ``--tokens`` with every seed of ``--seeds`` (the seed orders the token blocks). Dev bits
per byte are measured at several token budgets along each run (constant learning rate after a short
warm-up, so a budget is a prefix of the longest run); WikiText-2 **test** is scored once, at the end of
each seed run, and never read by a choice. Cross-entropy only (``--distill`` adds α = 0.5 runs of
the winners).
Writes ``benchmarks/results/<name>.{json,md,png}`` after every run (``--resume`` skips runs already
there). The selection is cached in ``benchmarks/results/.runs/selection`` (delete it to recompute).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import date
from pathlib import Path

from data import TEST, data_file, dev_text  # benchmarks/data.py
from datasets import Dataset
from machine import describe  # benchmarks/machine.py
from peft import PeftModel
from plotting import pyplot  # benchmarks/plotting.py
from trainers import BudgetEval, constant_lr_arguments  # benchmarks/trainers.py
from transformers import AutoTokenizer, default_data_collator

from hf_projcomp import ProjCompConfig, ProjCompTrainer, get_projcomp_model, hard_prune
from hf_projcomp.blocks import text_blocks
from hf_projcomp.demo import load_demo_model
from hf_projcomp.evaluate import bits_per_byte, load_text
from hf_projcomp.importance.calibration import iter_calibration_texts
from hf_projcomp.projection import unwrap
from hf_projcomp.texts import CALIBRATION, bundled_text
from hf_projcomp.training import DistillationTrainer, Teacher

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
SEQUENCE, MICRO_BATCH, ACCUMULATION = 256, 4, 4
TOKENS_PER_STEP = SEQUENCE * MICRO_BATCH * ACCUMULATION
TARGET = {"hidden_size": 512, "intermediate_size": 1024, "vocab_size": 52_000}


def lr_pair(text: str) -> tuple[float, float]:
    lr, _, plr = text.partition(":")
    try:
        return float(lr), float(plr)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LR:P_LR such as 1e-4:1e-5, got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32_768, help="training tokens of each seed run")
    parser.add_argument("--probe-tokens", type=int, default=32_768, help="training tokens of each grid run")
    parser.add_argument(
        "--pool-tokens",
        type=int,
        default=102_400,
        help="the token blocks every run draws from, in its seed's order (at least --tokens)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--pc-grid",
        type=lr_pair,
        nargs="+",
        default=[(3e-5, 3e-6), (1e-4, 1e-5), (3e-4, 3e-5), (1e-4, 1e-6)],
        help="LR of A and the norms : LR of P",
    )
    parser.add_argument("--retrain-grid", type=float, nargs="+", default=[3e-5, 1e-4, 3e-4])
    parser.add_argument("--distill", action="store_true", help="also run the winners with distillation (α = 0.5)")
    parser.add_argument("--name", default="train_quality", help="results file name")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in <name>.json and skip them")
    parser.add_argument("--note", default="", help="a line for the markdown")
    parser.add_argument("--eval-chars", type=int, default=20_000, help="dev characters scored at each budget")
    parser.add_argument("--final-eval-chars", type=int, default=60_000, help="dev and test characters at the end")
    args = parser.parse_args()
    steps = max(1, -(-args.tokens // TOKENS_PER_STEP))
    probe_steps = max(1, min(steps, -(-args.probe_tokens // TOKENS_PER_STEP)))

    def budgets(n: int) -> list[int]:
        return [b * TOKENS_PER_STEP for b in sorted({max(1, n // 4), max(1, n // 2), n})]

    base, tokenizer = load_demo_model()
    dev, final_dev = dev_text(args.eval_chars), dev_text(args.final_eval_chars)
    final_test = load_text(data_file(TEST), max_chars=args.final_eval_chars)
    adapter, small_tok, selection_seconds = selection(base, tokenizer)
    kept = unwrap(PeftModel.from_pretrained(base, adapter)).selection()
    vocab = kept.vocab.tolist()
    pool = max(args.pool_tokens, steps * TOKENS_PER_STEP)  # a shorter run's pool is a prefix of a longer one's
    texts = iter_calibration_texts(bundled_text(CALIBRATION, path=True))
    blocks = text_blocks(
        small_tok, texts, SEQUENCE, add_special_tokens=True, max_tokens=pool + SEQUENCE, progress=False
    )
    data = Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    if len(data) * SEQUENCE < pool:
        raise SystemExit(f"the calibration text has {len(data) * SEQUENCE:,} tokens in blocks, fewer than {pool:,}")
    previous = OUT / f"{args.name}.json"
    results = json.loads(previous.read_text()) if args.resume and previous.is_file() else None
    if results is None:
        step0 = hard_prune(base, kept.hidden, kept.ffn, kept.vocab)
        results = {
            "model": "Gemma-3-270M (GGUF Q4_K_M dequantized to fp32)",
            "machine": describe(),
            "date": date.today().isoformat(),
            "probe_tokens": probe_steps * TOKENS_PER_STEP,
            "eval_chars": args.eval_chars,
            "final_eval_chars": args.final_eval_chars,
            "target": {**TARGET, "vocab_size": len(small_tok)},
            "tokens_per_step": TOKENS_PER_STEP,
            "selection_seconds": selection_seconds,
            "base": {
                "dev": bits_per_byte(base, tokenizer, final_dev, progress=False),
                "test": bits_per_byte(base, tokenizer, final_test, progress=False),
            },
            "step0": {
                "dev": bits_per_byte(step0, small_tok, final_dev, progress=False),
                "test": bits_per_byte(step0, small_tok, final_test, progress=False),
            },
            "small_parameters": step0.num_parameters(),
            "runs": [],
            "note": args.note,
        }
        del step0
        print(f"base {results['base']}, hard-pruned step 0 {results['step0']}", flush=True)
    results.update(tokens=steps * TOKENS_PER_STEP, pool_tokens=len(data) * SEQUENCE)

    def run(phase: str, method: str, lr: float, plr: float | None, seed: int, distill: float = 0.0) -> dict:
        n = probe_steps if phase == "grid" else steps
        key = {
            "phase": phase,
            "method": method,
            "learning_rate": lr,
            "projection_learning_rate": plr,
            "seed": seed,
            "distill_alpha": distill,
            "steps": n,
        }
        for row in results["runs"]:
            if all(row.get(k) == v for k, v in key.items()):
                return row
        training = constant_lr_arguments(str(OUT / ".runs" / "trainer"), MICRO_BATCH, ACCUMULATION, n, lr, seed)
        if method == "pc":
            pc = PeftModel.from_pretrained(base, adapter, is_trainable=True)
            trained = pc.merge_and_unload
            trainer = ProjCompTrainer(
                model=pc,
                args=training,
                train_dataset=data,
                data_collator=default_data_collator,
                distill_alpha=distill,
                projection_learning_rate=plr,
            )
        else:
            model = hard_prune(base, kept.hidden, kept.ffn, kept.vocab)
            model.train().requires_grad_(True)
            trained = model.eval
            trainer = DistillationTrainer(
                model=model,
                args=training,
                train_dataset=data,
                data_collator=default_data_collator,
                teacher=Teacher(base, vocab),
                distill_alpha=distill,
            )
        callback = BudgetEval(
            lambda: {"bits_per_byte": bits_per_byte(trained(), small_tok, dev, progress=False)},
            budgets(n),
            TOKENS_PER_STEP,
        )
        trainer.add_callback(callback)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        small = trained()
        row = {
            **key,
            "train_seconds": seconds,
            "budgets": callback.points,
            "losses": [
                (log["step"] * TOKENS_PER_STEP, log["loss"]) for log in trainer.state.log_history if "loss" in log
            ],
            "final_dev": bits_per_byte(small, small_tok, final_dev, progress=False),
        }
        if phase == "seed":  # test is scored only for the reported runs, never for the grid
            row["final_test"] = bits_per_byte(small, small_tok, final_test, progress=False)
        print({k: v for k, v in row.items() if k != "losses"}, flush=True)
        results["runs"].append(row)
        write(results, args.name)
        return row

    grids = {"pc": list(args.pc_grid), "retrain": [(lr, None) for lr in args.retrain_grid]}
    best = {}
    for method, grid in grids.items():
        rows = [run("grid", method, lr, plr, args.seeds[0]) for lr, plr in grid]
        winner = min(rows, key=lambda r: r["final_dev"])
        best[method] = (winner["learning_rate"], winner["projection_learning_rate"])
    results["chosen"] = best
    write(results, args.name)
    for seed in args.seeds:
        for method, (lr, plr) in best.items():
            run("seed", method, lr, plr, seed)
    if args.distill:
        for method, (lr, plr) in best.items():
            run("seed", method, lr, plr, args.seeds[0], 0.5)
    write(results, args.name)


def selection(base, tokenizer):
    """The initial adapter's directory, its pruned tokenizer and the seconds selection took (cached: it
    takes minutes and every run starts from it)."""
    cache = OUT / ".runs" / "selection"
    # The request, not the recorded config: that holds the vocabulary reached (at most the one asked for).
    request = {**TARGET, "importance": "compact", "calibration": CALIBRATION}
    if not (cache / "selection.json").is_file():
        start = time.perf_counter()
        config = ProjCompConfig(**TARGET, importance="compact")
        init = get_projcomp_model(
            base, config, calibration_data=str(bundled_text(CALIBRATION, path=True)), tokenizer=tokenizer
        )
        seconds = time.perf_counter() - start
        init.save_pretrained(cache)  # the selections and the pruned tokenizer with it
        (cache / "selection.json").write_text(json.dumps({"request": request, "seconds": seconds}))
    cached = json.loads((cache / "selection.json").read_text())
    if cached["request"] != request:
        raise SystemExit(f"{cache} holds a selection for {cached['request']}, not {request}: delete it to recompute")
    return cache, AutoTokenizer.from_pretrained(cache), cached["seconds"]


def spread(values: list[float]) -> str:
    """Mean ± sample standard deviation (min…max) of ``values``."""
    if len(values) < 2:
        return f"{values[0]:.4f} (one seed)" if values else ""
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} ({min(values):.4f}…{max(values):.4f})"


def write(results: dict, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    runs = [r for r in results["runs"] if r["distill_alpha"] == 0]
    grid = [r for r in runs if r["phase"] == "grid"]
    seeds = [r for r in results["runs"] if r["phase"] == "seed"]
    chosen = results.get("chosen", {})

    def plr(r):
        return "" if r["projection_learning_rate"] is None else f"{r['projection_learning_rate']:g}"

    def budget_table(rows, final_columns):
        budgets = sorted({p["tokens"] for r in rows for p in r["budgets"]})
        head = (
            "| method | LR | P LR | seed | distill α | "
            + " | ".join(f"dev @ {b:,} tok" for b in budgets)
            + "".join(f" | {c}" for c, _ in final_columns)
            + " |"
        )
        lines = [head, "|---" * (5 + len(budgets) + len(final_columns)) + "|"]
        for r in rows:
            by = {p["tokens"]: p["bits_per_byte"] for p in r["budgets"]}
            cells = " | ".join(f"{by[b]:.4f}" if b in by else "" for b in budgets)
            finals = "".join(f" | {fmt(r)}" for _, fmt in final_columns)
            lines.append(
                f"| {r['method']} | {r['learning_rate']:g} | {plr(r)} | {r['seed']} | {r['distill_alpha']:g} | "
                f"{cells}{finals} |"
            )
        return lines

    final = results["final_eval_chars"]
    lines = [
        "# Projected compression vs hard-prune + retrain, Gemma-3-270M",
        "",
        f"{results['model']} -> vocabulary {results['target']['vocab_size']:,} (COMPACT), d_model 512, d_ff 1024 "
        f"({results['small_parameters']:,} parameters); both from the same selection, calibrated on the bundled "
        f"calibration text (WikiText-2 validation minus the dev tail), and trained on the same "
        f"{results.get('pool_tokens', 0) // 256:,} blocks of 256 tokens of that text, in the order the seed gives "
        "(so a shorter run trains on a prefix of a longer one's batches; "
        f"{results['tokens_per_step']:,} tokens/step, constant LR after 2 warm-up steps, cross-entropy; for pc, "
        f"LR is that of A and the norms, P LR that of P). {results['machine']}, {results['date']}. "
        f"`python benchmarks/train_quality.py`.",
        "",
        f"**dev**: WikiText-2 validation after the calibration text, first {results['eval_chars']:,} characters at "
        f"each budget and {final:,} at the end; **test**: WikiText-2 raw test, first {final:,} characters, scored "
        "once at the end of each seed run and never used to choose. Bits per byte, 1024-token windows.",
        "",
        *([results["note"], ""] if results.get("note") else []),
        f"Base model: dev {results['base']['dev']:.4f}, test {results['base']['test']:.4f}. Hard-pruned at step 0: "
        f"dev {results['step0']['dev']:.4f}, test {results['step0']['test']:.4f}.",
        "",
        f"## Learning rates, chosen on dev ({results['probe_tokens']:,} tokens, "
        f"seed {grid[0]['seed'] if grid else ''})",
        "",
        *budget_table(
            grid,
            [
                (f"dev ({final:,} chars)", lambda r: f"{r['final_dev']:.4f}"),
                (
                    "chosen",
                    lambda r: (
                        "**yes**"
                        if (r["learning_rate"], r["projection_learning_rate"]) == tuple(chosen.get(r["method"], ()))
                        else ""
                    ),
                ),
            ],
        ),
    ]
    if seeds:
        lines += [
            "",
            f"## The chosen rates, {results['tokens']:,} tokens, one run per seed",
            "",
            *budget_table(
                seeds,
                [
                    (f"dev ({final:,} chars)", lambda r: f"{r['final_dev']:.4f}"),
                    (f"test ({final:,} chars)", lambda r: f"{r['final_test']:.4f}"),
                ],
            ),
            "",
            "Mean ± standard deviation over seeds (min…max); the difference is paired by seed (the same batches).",
            "",
            "| method | dev | test |",
            "|---|---|---|",
        ]
        plain = [r for r in seeds if r["distill_alpha"] == 0]
        by_method = {m: {r["seed"]: r for r in plain if r["method"] == m} for m in ("pc", "retrain")}
        for method, rows in by_method.items():
            if rows:
                lines.append(
                    f"| {method} | {spread([r['final_dev'] for r in rows.values()])} | "
                    f"{spread([r['final_test'] for r in rows.values()])} |"
                )
        paired = sorted(set(by_method["pc"]) & set(by_method["retrain"]))
        if paired:
            diff = {
                split: [
                    by_method["pc"][s][f"final_{split}"] - by_method["retrain"][s][f"final_{split}"] for s in paired
                ]
                for split in ("dev", "test")
            }
            lines.append(f"| pc − retrain | {spread(diff['dev'])} | {spread(diff['test'])} |")
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in seeds or runs:
        tokens, losses = zip(*r["losses"], strict=True) if r["losses"] else ((), ())
        ax.plot(
            tokens,
            losses,
            label=f"{r['method']} lr={r['learning_rate']:g} P lr={plr(r) or '-'} seed {r['seed']}"
            f"{' α=' + format(r['distill_alpha'], 'g') if r['distill_alpha'] else ''}",
        )
    ax.set_xlabel("training tokens")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / f"{name}.png", dpi=120)


if __name__ == "__main__":
    main()
