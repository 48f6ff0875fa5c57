"""Projected compression vs hard-prune + retrain on Gemma-3-270M, same init, same tokens (not a unit test).

    python benchmarks/train_quality.py [--tokens 102400] [--pc-lrs 1e-4 3e-4] [--pc-projection-lrs 1e-5]
                                       [--retrain-lrs 1e-4 3e-4] [--name train_quality]

Both methods start from the same selection: COMPACT's kept vocabulary (so training is affordable on
a CPU), d_model 640 -> 512 and d_ff 2048 -> 1024 ranked by common-token act² on
``wikitext-2/valid.txt``. Then, on the same token blocks of that file in the same order:

- ``pc``: ProjCompTrainer (P, A and norms train; the base stays frozen; W_c once per step). Its
  grid is (LR of A and norms) × (LR of P); with P frozen it would be exactly ``retrain``;
- ``retrain``: the hard-pruned vanilla model, every weight trained with a plain ``Trainer``.

Each method's learning rate is picked on a small grid (cross-entropy runs, lowest final bits per
byte); the best of each is then also run with distillation from the frozen base (α = 0.5, T = 1,
the same loss for both methods).
Bits per byte are measured on the first ``--eval-chars`` characters of the WikiText-2 test file
at several token budgets along each run (constant learning rate after a short warm-up, so a budget
is a prefix of the longest run), and on ``--final-eval-chars`` at the end.
Writes ``benchmarks/results/<name>.{json,md,png}``. The selection is cached in
``benchmarks/results/.runs/selection`` (delete it to recompute).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

from datasets import Dataset
from peft import PeftModel
from transformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments, default_data_collator

from hf_projcomp import ProjCompConfig, ProjCompTrainer, get_projcomp_model, hard_prune
from hf_projcomp.projection import unwrap
from hf_projcomp.demo import load_demo_model
from hf_projcomp.evaluate import bits_per_byte, load_text
from hf_projcomp.training import DistillationMixin, Teacher
from data import TEST, VALID, data_file  # benchmarks/data.py
from machine import describe  # benchmarks/machine.py
from plotting import pyplot  # benchmarks/plotting.py

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
SEQUENCE, MICRO_BATCH, ACCUMULATION = 256, 4, 4
TOKENS_PER_STEP = SEQUENCE * MICRO_BATCH * ACCUMULATION


class RetrainTrainer(DistillationMixin, Trainer):
    """A plain Trainer for the hard-pruned model, with the same distillation as ProjCompTrainer."""

    def __init__(self, *args, teacher: Teacher, distill_alpha: float, **kwargs) -> None:
        self.init_distillation(teacher, distill_alpha)
        super().__init__(*args, **kwargs)


class BudgetEval(TrainerCallback):
    """Bits per byte of the model so far whenever the tokens trained reach the next budget."""

    def __init__(self, evaluate, budgets: list[int]) -> None:
        self.evaluate, self.budgets, self.points = evaluate, sorted(budgets), []

    def on_step_end(self, args, state, control, **kwargs):
        tokens = state.global_step * TOKENS_PER_STEP
        while self.budgets and tokens >= self.budgets[0]:
            self.budgets.pop(0)
            self.points.append({"tokens": tokens, "bits_per_byte": self.evaluate()})


def token_blocks(tokenizer, max_tokens: int) -> Dataset:
    text = load_text(data_file(VALID))
    ids = tokenizer(text).input_ids[: max_tokens + SEQUENCE]
    blocks = [ids[i : i + SEQUENCE] for i in range(0, len(ids) - SEQUENCE + 1, SEQUENCE)]
    return Dataset.from_dict({"input_ids": blocks, "labels": blocks})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=102_400)
    parser.add_argument("--pc-lrs", type=float, nargs="+", default=[1e-4, 3e-4], help="LRs of A and the norms")
    parser.add_argument("--pc-projection-lrs", type=float, nargs="+", default=[1e-5], help="LRs of P")
    parser.add_argument("--retrain-lrs", type=float, nargs="+", default=[1e-4, 3e-4])
    parser.add_argument("--no-distill", action="store_true", help="grid only, no distillation runs")
    parser.add_argument("--distill-only", action="store_true",
                        help="skip the grid: distillation runs at the given (single) LRs, e.g. with --append")
    parser.add_argument("--name", default="train_quality", help="results file name")
    parser.add_argument("--append", action="store_true", help="add to the runs already in <name>.json")
    parser.add_argument("--note", default="", help="a line for the markdown (e.g. where the LRs came from)")
    parser.add_argument("--eval-chars", type=int, default=20_000)
    parser.add_argument("--final-eval-chars", type=int, default=60_000)
    args = parser.parse_args()
    steps = max(1, -(-args.tokens // TOKENS_PER_STEP))
    budgets = sorted({max(1, steps // 4), max(1, steps // 2), steps})
    budgets = [b * TOKENS_PER_STEP for b in budgets]

    base, tokenizer = load_demo_model()
    test = data_file(TEST)
    eval_text, final_text = load_text(test, max_chars=args.eval_chars), load_text(test, max_chars=args.final_eval_chars)
    config = ProjCompConfig(hidden_size=512, intermediate_size=1024, vocab_size=52_000, importance="compact")
    adapter, small_tok, selection_seconds = selection(base, tokenizer, config)
    kept = unwrap(PeftModel.from_pretrained(base, adapter)).selection()
    vocab = kept.vocab.tolist()
    data = token_blocks(small_tok, steps * TOKENS_PER_STEP)
    results = {
        "model": "Gemma-3-270M (GGUF Q4_K_M dequantized to fp32)",
        "machine": describe(),
        "date": date.today().isoformat(), "tokens": steps * TOKENS_PER_STEP, "eval_chars": args.eval_chars, "final_eval_chars": args.final_eval_chars,
        "target": {"hidden_size": 512, "intermediate_size": 1024, "vocab_size": len(small_tok)},
        "tokens_per_step": TOKENS_PER_STEP, "selection_seconds": selection_seconds,
        "base_bits_per_byte": bits_per_byte(base, tokenizer, final_text, progress=False), "runs": [],
        "note": args.note,
    }
    previous = OUT / f"{args.name}.json"
    if args.append and previous.is_file():
        results["runs"] = json.loads(previous.read_text())["runs"]
    step0 = hard_prune(base, kept.hidden, kept.ffn, kept.vocab)
    results["step0_bits_per_byte"] = bits_per_byte(step0, small_tok, final_text, progress=False)
    results["small_parameters"] = step0.num_parameters()
    print(f"base {results['base_bits_per_byte']:.4f}, hard-pruned step 0 {results['step0_bits_per_byte']:.4f}", flush=True)

    def run(method: str, lr: float, distill: float, projection_lr: float | None = None) -> dict:
        training = TrainingArguments(
            str(OUT / ".runs" / f"{method}-{lr:g}-{projection_lr}-{distill:g}"), per_device_train_batch_size=MICRO_BATCH,
            gradient_accumulation_steps=ACCUMULATION, max_steps=steps, learning_rate=lr,
            lr_scheduler_type="constant_with_warmup", warmup_steps=2, weight_decay=0.0, max_grad_norm=1.0,
            logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
        )
        if method == "pc":
            pc = PeftModel.from_pretrained(base, adapter, is_trainable=True)
            trained = pc.merge_and_unload
            trainer = ProjCompTrainer(model=pc, args=training, train_dataset=data, data_collator=default_data_collator,
                                      distill_alpha=distill, projection_learning_rate=projection_lr)
        else:
            model = hard_prune(base, kept.hidden, kept.ffn, kept.vocab)
            model.train().requires_grad_(True)
            trained = model.eval
            trainer = RetrainTrainer(model=model, args=training, train_dataset=data, data_collator=default_data_collator,
                                     teacher=Teacher(base, vocab), distill_alpha=distill)
        callback = BudgetEval(lambda: bits_per_byte(trained(), small_tok, eval_text, progress=False), budgets)
        trainer.add_callback(callback)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        row = {"method": method, "learning_rate": lr, "projection_learning_rate": projection_lr,
               "distill_alpha": distill, "train_seconds": seconds,
               "teacher_seconds": getattr(trainer, "teacher_seconds", 0.0), "budgets": callback.points,
               "losses": [(log["step"] * TOKENS_PER_STEP, log["loss"]) for log in trainer.state.log_history if "loss" in log],
               "final_bits_per_byte": bits_per_byte(trained(), small_tok, final_text, progress=False)}
        print({k: v for k, v in row.items() if k != "losses"}, flush=True)
        results["runs"].append(row)
        write(results, args.name)
        return row

    grids = {"pc": [(lr, plr) for lr in args.pc_lrs for plr in args.pc_projection_lrs],
             "retrain": [(lr, None) for lr in args.retrain_lrs]}
    best = {}
    for method, grid in grids.items():
        if args.distill_only:
            if len(grid) != 1:
                parser.error("--distill-only takes one LR (and one P LR) per method")
            best[method] = grid[0]
            continue
        rows = [run(method, lr, 0.0, plr) for lr, plr in grid]
        winner = min(rows, key=lambda r: r["final_bits_per_byte"])
        best[method] = (winner["learning_rate"], winner["projection_learning_rate"])
    results["best_learning_rates"] = best
    if not args.no_distill:
        for method, (lr, plr) in best.items():
            run(method, lr, 0.5, plr)
    write(results, args.name)


def selection(base, tokenizer, config: ProjCompConfig):
    """The initial adapter's directory, its pruned tokenizer and the seconds selection took (cached: it
    takes minutes and every run starts from it)."""
    cache = OUT / ".runs" / "selection"
    # The request, not the recorded config: that holds the vocabulary reached (at most the one asked for).
    request = {t: getattr(config, t) for t in ("hidden_size", "intermediate_size", "vocab_size", "importance")}
    if not (cache / "selection.json").is_file():
        start = time.perf_counter()
        init = get_projcomp_model(base, config, calibration_data=str(data_file(VALID)),
                                  tokenizer=tokenizer)
        seconds = time.perf_counter() - start
        init.save_pretrained(cache)  # the selections and the pruned tokenizer with it
        (cache / "selection.json").write_text(json.dumps({"request": request, "seconds": seconds}))
    cached = json.loads((cache / "selection.json").read_text())
    if cached["request"] != request:
        raise SystemExit(f"{cache} holds a selection for {cached['request']}, not {request}: delete it to recompute")
    return cache, AutoTokenizer.from_pretrained(cache), cached["seconds"]


def write(results: dict, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    budgets = sorted({p["tokens"] for r in results["runs"] for p in r["budgets"]})
    lines = [
        "# Projected compression vs hard-prune + retrain, Gemma-3-270M",
        "",
        f"{results['model']} -> vocabulary {results['target']['vocab_size']:,} (COMPACT), d_model 512, d_ff 1024 "
        f"({results['small_parameters']:,} parameters); same init indices, same tokens of wikitext-2 valid "
        f"({results['tokens_per_step']:,} tokens/step, constant LR after 2 warm-up steps; for pc, LR is that of "
        f"A and the norms, P LR that of P). Bits per byte on the "
        f"first {results['eval_chars']:,} characters of WikiText-2 test at each budget, and on "
        f"{results['final_eval_chars']:,} at the end. {results['machine']}, {results['date']}.",
        "",
        *([results["note"], ""] if results.get("note") else []),
        f"Base model: {results['base_bits_per_byte']:.4f} bpb; hard-pruned at step 0: "
        f"{results['step0_bits_per_byte']:.4f} bpb ({results['final_eval_chars']:,} characters).",
        "",
        "| method | LR | P LR | distill α | " + " | ".join(f"{b:,} tok" for b in budgets)
        + f" | final ({results['final_eval_chars']:,} chars) | train s | teacher s |",
        "|---|---|---|---|" + "---|" * len(budgets) + "---|---|---|",
    ]
    for r in results["runs"]:
        by = {p["tokens"]: p["bits_per_byte"] for p in r["budgets"]}
        cells = " | ".join(f"{by[b]:.4f}" if b in by else "" for b in budgets)
        plr = r.get("projection_learning_rate")
        lines.append(f"| {r['method']} | {r['learning_rate']:g} | {'' if plr is None else f'{plr:g}'} | "
                     f"{r['distill_alpha']:g} | {cells} | "
                     f"{r['final_bits_per_byte']:.4f} | {r['train_seconds']:.0f} | {r['teacher_seconds']:.0f} |")
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results["runs"]:
        tokens, losses = zip(*r["losses"]) if r["losses"] else ((), ())
        plr = "" if r.get("projection_learning_rate") is None else f" P lr={r['projection_learning_rate']:g}"
        ax.plot(tokens, losses, label=f"{r['method']} lr={r['learning_rate']:g}{plr} α={r['distill_alpha']:g}")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("training loss (CE, or CE/KL mix with distillation)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / f"{name}.png", dpi=120)


if __name__ == "__main__":
    main()
