"""COMPACT at 50%, 40% and 30% of Gemma-3-270M, then a short distillation from the base (not a unit test).

    python benchmarks/heal_gemma.py [--grid 1e-5 3e-5] [--seeds 0 1 2] [--targets 40% 30%] [--tokens 65536]
        [--other-splits] [--decay 32768 65536] [--resume]

Training-free COMPACT misses issue 19's 40% and 30% goals, and 50%'s by 0.005 (``compact_gemma.md``). This measures the
cheapest training that uses nothing but what COMPACT already has, through the library's
:func:`~hf_projcomp.training.distill_pruned` (what ``projcomp compress --distill-tokens`` runs): the
pruned vanilla model trains every weight on the bundled calibration text (WikiText-2 validation minus
the dev tail; 256-token blocks, 8 per step, constant LR after 2 warm-up steps; the seed orders the
blocks) on KL(base ‖ pruned), the base's next-token distribution renormalised over the kept vocabulary,
so it learns what the base predicts on that text, not the text's own format (``<unk>``).

Splits: the ones COMPACT's default search chose at these budgets (``compact_gemma.md``), passed as
``split`` so the search is not rerun. Every model is scored in two regimes: **plain** (the protocol's
1024-token windows of one BOS-prefixed stream, so all windows but the first start without BOS) and
**BOS** (every window starts with BOS, as a served Gemma always sees text).

Protocol (benchmarks/README.md): every choice is made on **dev** (WikiText-2 validation after the
calibration text) at 40% and 32,768 tokens: first the learning rate (seed 0, one stream of blocks, dev plain over the
first 20,000 characters at the end of the run), then the blocks (one BOS-prefixed stream cut into
blocks, or BOS at the start of each block, ``bos_each_block``: the lower mean over ``--seeds`` of
dev plain + dev BOS, 60,000 characters each). **test** (the first 60,000 characters of WikiText-2
raw test) is scored once per reported run (both block recipes at 40%, the chosen one at every target
of ``--targets`` and every budget of ``--tokens``), never to choose. At each target, the model for
issue 19's goal table is dev's pick among the training-free model and the chosen recipe at each
budget and split run (the lowest mean over seeds of dev plain + dev BOS); ``--other-splits`` and
``--decay`` runs are scored on test only when picked. ``--decay`` runs the chosen recipe at each of its
budgets with a cosine decay from twice the chosen learning rate instead of the constant one (the same
mean learning rate, ending at zero).

Writes ``benchmarks/results/heal_gemma.{json,md}`` after every run; pruned models are cached in
``benchmarks/results/.runs/heal-<target>`` (delete to recompute).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import date
from pathlib import Path
from typing import NamedTuple

import torch
from data import TEST, data_file, dev_text, ood_dev_text  # benchmarks/data.py
from machine import describe  # benchmarks/machine.py
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_projcomp.compact import compact_prune
from hf_projcomp.demo import load_demo_model
from hf_projcomp.evaluate import bits_per_byte, load_text
from hf_projcomp.texts import CALIBRATION, bundled_text
from hf_projcomp.training import DistillConfig, distill_pruned

OUT = Path(__file__).resolve().parent / "results"
RUNS = OUT / ".runs"
TOKENS_PER_STEP = DistillConfig().tokens_per_step
SPLITS = {"50%": (52_692, 2048), "40%": (38_449, 1536), "30%": (24_207, 1024)}  # compact_gemma.md's chosen splits
# The search's candidates beside its choice at 40% (one FFN width wider and narrower; compact_gemma.md):
# distillation recovers FFN channels' loss and not the vocabulary's, so its best split may differ.
OTHER_SPLITS = {"40%": ((24_625, 1792), (52_273, 1280))}
GOALS = {"50%": 0.05, "40%": 0.15, "30%": 0.35}
BUDGET_CHARS, FINAL_CHARS, TEST_CHARS = 20_000, 60_000, 60_000
CHOICE_TOKENS = 32_768  # the budget the learning rate and the blocks are chosen at
CONSTANT = "constant_with_warmup"  # DistillConfig's schedule, every run's before --decay
DECAY = ("cosine", 2.0)  # --decay's schedule and its peak over the chosen LR: cosine's mean LR is half its peak


def split_suffix(target: str, split) -> str:
    return "" if tuple(split) == SPLITS[target] else f"-{split[0]}x{split[1]}"


def pruned(target: str, model, tokenizer, split=None):
    """COMPACT's model at ``target`` and ``split`` (default: the search's; cached), its tokenizer and kept
    base ids."""
    split = tuple(split or SPLITS[target])
    cache = RUNS / f"heal-{target.rstrip('%')}{split_suffix(target, split)}"
    if not (cache / "kept.pt").is_file():
        small, small_tok, selection = compact_prune(
            model, tokenizer, str(bundled_text(CALIBRATION, path=True)), split=split, progress=False
        )
        small.save_pretrained(cache)
        small_tok.save_pretrained(cache)
        torch.save(selection.kept_token_ids, cache / "kept.pt")
    return (
        AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32),
        AutoTokenizer.from_pretrained(cache),
        torch.load(cache / "kept.pt"),
    )


def heal(run: dict, model, tokenizer) -> tuple:
    """Distil COMPACT's model at ``run["target"]`` as ``run`` says: the model, its tokenizer, seconds."""
    small, small_tok, kept = pruned(run["target"], model, tokenizer, run["split"])
    config = DistillConfig(
        max_tokens=run["tokens"],
        learning_rate=run["lr"],
        seed=run["seed"],
        bos_each_block=run["bos_each_block"],
        lr_scheduler_type=run["schedule"],
    )
    start = time.perf_counter()
    distill_pruned(
        small, model, small_tok, bundled_text(CALIBRATION, path=True), vocab_indices=kept, config=config, progress=False
    )
    return small.eval(), small_tok, time.perf_counter() - start


def recipe(run: dict) -> str:
    name = "BOS each block" if run["bos_each_block"] else "one stream"
    if split_suffix(run["target"], run["split"]):
        name += f", {run['split'][0]:,} × {run['split'][1]}"
    if run["schedule"] != CONSTANT:
        name += f", {run['schedule']} decay"
    return name


def decayed(lr: float) -> tuple[float, str]:
    """``--decay``'s peak learning rate and schedule for the chosen constant ``lr``."""
    return lr * DECAY[1], DECAY[0]


def write(results: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "heal_gemma.json").write_text(json.dumps(results, indent=2) + "\n")
    base = results["base"]

    def delta(scores: dict, key: str, base_key: str | None = None) -> str:
        value = scores.get(key)
        return "–" if value is None else f"{value - base[base_key or key]:+.4f}"

    budget_cols = sorted({p["tokens"] for r in results["runs"] for p in r["points"]})  # runs before the BOS columns
    lines = [
        f"# COMPACT + distillation from the base, {results['model']}",
        "",
        f"{results['machine']}, {results['date']}. `python benchmarks/heal_gemma.py`. The pruned vanilla model "
        "(COMPACT's default split at each budget) trains every weight with `hf_projcomp.distill_pruned`: "
        "KL(base ‖ pruned) over the bundled calibration text, "
        f"{TOKENS_PER_STEP:,} tokens/step in 256-token blocks, constant LR after 2 warm-up steps (`--decay`: "
        "cosine decay from twice the LR, named in the blocks column), the seed ordering the blocks. Blocks are "
        "cut from **one stream** (one BOS at the text's start) or start with **BOS each block** "
        "(`bos_each_block=True`). Bits per byte, 1024-token windows, in two regimes: "
        "**plain** (the protocol's: one BOS-prefixed stream cut into windows, so most windows start "
        "without BOS) and **BOS** (every window starts with BOS, as a served model sees text). "
        f"**dev**: WikiText-2 validation after the calibration text (first {BUDGET_CHARS:,} characters along the "
        f"run, {FINAL_CHARS:,} at the end); **OOD dev**: Python source; **test**: WikiText-2 raw test, first "
        f"{TEST_CHARS:,} characters, scored once per reported run, never used to choose. Δ: against the base.",
        "",
        f"Base, plain / BOS: dev {base['dev_budget']:.4f} / {base['dev_budget_bos']:.4f} ({BUDGET_CHARS:,} "
        f"characters), {base['dev']:.4f} / {base['dev_bos']:.4f} ({FINAL_CHARS:,}); OOD dev {base['ood']:.4f} / "
        f"{base['ood_bos']:.4f}; test {base['test']:.4f} / {base['test_bos']:.4f}.",
        "",
        "## Along each run: Δ dev plain / Δ dev BOS / Δ OOD dev plain",
        "",
        "| target | vocab × d_ff | blocks | LR | seed | " + " | ".join(f"{t:,} tokens" for t in budget_cols) + " |",
        "|---|---|---|---|---|" + "---|" * len(budget_cols),
    ]

    def order(r: dict) -> tuple:
        return (
            list(SPLITS).index(r["target"]),
            r.get("bos_each_block", False),
            tuple(r["split"]),
            r["lr"],
            r["tokens"],
            r["seed"],
        )

    for run in sorted((r for r in results["runs"] if r["points"]), key=order):
        by_tokens = {p["tokens"]: p for p in run["points"]}
        cells = [
            f"{delta(by_tokens[t], 'dev', 'dev_budget')} / {delta(by_tokens[t], 'dev_bos', 'dev_budget_bos')} / "
            f"{delta(by_tokens[t], 'ood')}"
            if t in by_tokens
            else ""
            for t in budget_cols
        ]
        lines.append(
            f"| {run['target']} | {run['split'][0]:,} × {run['split'][1]} | {recipe(run)} | {run['lr']:g} | "
            f"{run['seed']} | " + " | ".join(cells) + " |"
        )
    keys = ("dev", "dev_bos", "ood", "ood_bos", "test", "test_bos")
    lines += [
        "",
        "## At the end of each reported run (dev and OOD: 60,000 characters)",
        "",
        "| target | blocks | LR | seed | tokens | Δ dev | Δ dev BOS | Δ OOD | Δ OOD BOS | Δ test | Δ test BOS | "
        "goal (Δ test) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target in SPLITS:
        free = results["training_free"].get(target)
        if free:
            lines.append(
                f"| {target} | training-free | | | 0 | "
                + " | ".join(delta(free, k) for k in keys)
                + f" | ≤ +{GOALS[target]:.2f} |"
            )
        groups: dict[tuple, list] = {}
        for run in sorted(
            (r for r in results["runs"] if r["target"] == target and "dev" in r.get("final", {})), key=order
        ):
            groups.setdefault((recipe(run), run["lr"], run["tokens"]), []).append(run)
            lines.append(
                f"| {target} | {recipe(run)} | {run['lr']:g} | {run['seed']} | {run['tokens']:,} | "
                + " | ".join(delta(run["final"], k) for k in keys)
                + f" | ≤ +{GOALS[target]:.2f} |"
            )
        for (name, lr, tokens), group in groups.items():
            if len(group) > 1:
                cells = []
                for k in keys:
                    values = [r["final"][k] - base[k] for r in group if k in r["final"]]
                    cells.append(
                        f"{statistics.mean(values):+.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else "–"
                    )
                lines.append(
                    f"| **{target}, mean ± sd** | {name} | {lr:g} | {len(group)} seeds | {tokens:,} | "
                    + " | ".join(cells)
                    + " | |"
                )
    lines += [
        "",
        "## Dev's pick at each target",
        "",
        "Among the training-free model and the chosen recipe at each split and budget run, the lowest mean over seeds "
        "of dev plain + dev BOS (60,000 characters each); its test is the goal table's. Test is shown for "
        "every candidate (each scored once) but picks nothing; met: the mean within the goal (and how many seeds are).",
        "",
        "| target | candidate | seeds | dev + dev BOS | Δ test (mean ± sd) | goal (Δ test) | picked | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target, candidates in dev_candidates(results).items():
        picked = dev_pick(candidates)
        for candidate in candidates:
            tests = [f["test"] - base["test"] for f in candidate.finals if "test" in f]
            scored = len(tests) == len(candidate.finals)
            test = (
                "–"
                if not scored
                else f"{tests[0]:+.4f}"
                if len(tests) == 1
                else f"{statistics.mean(tests):+.4f} ± {statistics.stdev(tests):.4f}"
            )
            met = ""
            if candidate is picked and scored:
                met = "yes" if statistics.mean(tests) <= GOALS[target] else "no"
                if len(tests) > 1:
                    met += f" ({sum(t <= GOALS[target] for t in tests)} of {len(tests)} seeds)"
            lines.append(
                f"| {target} | {candidate.name} | {len(candidate.finals)} | {candidate.dev_sum:.4f} | {test} | "
                f"≤ +{GOALS[target]:.2f} | {'**yes**' if candidate is picked else ''} | {met} |"
            )
    lines += [""] + [f"- {note}" for note in results.get("notes", [])]
    (OUT / "heal_gemma.md").write_text("\n".join(lines) + "\n")


class Candidate(NamedTuple):
    """A model dev may pick at a target: the training-free one, or the chosen recipe at a split and budget."""

    name: str
    finals: list[dict]  # each seed's final scores
    dev_sum: float  # mean over seeds of dev plain + dev BOS: what dev_pick minimises
    runs: list[dict]  # the runs (none for the training-free model)


def dev_pick(candidates: list[Candidate]) -> Candidate:
    return min(candidates, key=lambda c: c.dev_sum)


def dev_candidates(results: dict) -> dict[str, list[Candidate]]:
    """Per target: the training-free model and the chosen recipe at each split, budget and schedule with runs
    scored on dev (every seed's)."""
    out: dict[str, list] = {}
    for target in SPLITS:
        free = results["training_free"].get(target, {})
        if not all(k in free for k in ("dev", "dev_bos", "test")):
            continue
        out[target] = [Candidate("training-free", [free], free["dev"] + free["dev_bos"], [])]
        runs = [
            r
            for r in results["runs"]
            if r["target"] == target and is_chosen_recipe(r, results) and "dev_bos" in r.get("final", {})
        ]
        for key in sorted(
            {(tuple(r["split"]), r["tokens"], r["schedule"]) for r in runs},
            key=lambda k: (-k[0][1], k[1], k[2] != CONSTANT),
        ):
            group = [r for r in runs if (tuple(r["split"]), r["tokens"], r["schedule"]) == key]
            finals = [r["final"] for r in group]
            out[target].append(
                Candidate(
                    f"{recipe(group[0])}, {key[1]:,} tokens",
                    finals,
                    statistics.mean(f["dev"] + f["dev_bos"] for f in finals),
                    group,
                )
            )
    return out


def is_chosen_recipe(run: dict, results: dict) -> bool:
    """The chosen LR and blocks, with the constant schedule or ``--decay``'s (whatever the split and budget)."""
    lr = results.get("chosen_lr")
    return (
        lr is not None
        and run["bos_each_block"] == results.get("chosen_bos_each_block")
        and (run["lr"], run["schedule"]) in {(lr, CONSTANT), decayed(lr)}
    )


# key: (text, BOS at each window, characters scored; None: all of ``texts[text]``)
SCORES = {
    "dev_budget": ("dev", False, BUDGET_CHARS),
    "dev_budget_bos": ("dev", True, BUDGET_CHARS),
    "dev": ("dev", False, None),
    "dev_bos": ("dev", True, None),
    "ood": ("ood", False, None),
    "ood_bos": ("ood", True, None),
    "test": ("test", False, None),
    "test_bos": ("test", True, None),
}
# What a reported run is scored on; dev_budget_bos is the base's only (the along-run table's reference).
REPORTED = tuple(k for k in SCORES if k != "dev_budget_bos")


def score(model, tokenizer, texts: dict[str, str], scores: dict, keys=REPORTED) -> bool:
    """Fill in the ``keys`` of :data:`SCORES` that ``scores`` lacks; whether anything was added."""
    missing = [k for k in keys if k not in scores]
    for key in missing:
        text, bos, chars = SCORES[key]
        scores[key] = bits_per_byte(model, tokenizer, texts[text][:chars], progress=False, bos_each_window=bos)
    return bool(missing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tokens",
        type=int,
        nargs="+",
        default=[],
        help="budgets beyond the 32,768 tokens the choices are made at, run with the chosen recipe (e.g. 65536)",
    )
    parser.add_argument("--grid", type=float, nargs="+", default=[1e-5, 3e-5], help="learning rates tried at 40%%")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the chosen recipe's runs")
    parser.add_argument("--targets", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    parser.add_argument(
        "--other-splits",
        action="store_true",
        help="also distil OTHER_SPLITS (the search's "
        "neighbours of its choice), scored on dev; test only for dev's pick",
    )
    parser.add_argument(
        "--decay",
        type=int,
        nargs="+",
        default=[],
        metavar="TOKENS",
        help="budgets to run the "
        "chosen recipe at with a cosine decay from twice the chosen LR, scored on dev; test only for "
        "dev's pick",
    )
    parser.add_argument("--resume", action="store_true", help="keep runs already in heal_gemma.json")
    args = parser.parse_args()
    model, tokenizer = load_demo_model(dtype=torch.float32)
    texts = {
        "dev": dev_text(FINAL_CHARS),
        "ood": ood_dev_text(),
        "test": load_text(data_file(TEST), max_chars=TEST_CHARS),
    }
    path = OUT / "heal_gemma.json"
    results = json.loads(path.read_text()) if args.resume and path.is_file() else None
    if results is None:
        results = {
            "model": "Gemma-3-270M (GGUF Q4_K_M dequantized to float32)",
            "machine": describe(),
            "date": date.today().isoformat(),
            "base": {},
            "runs": [],
        }
    base = results["base"]
    score(model, tokenizer, texts, base, tuple(SCORES))
    for entry in results["runs"]:  # runs of earlier versions: one stream, seed 0 unless said
        entry.setdefault("seed", 0)
        entry.setdefault("bos_each_block", False)
        entry.setdefault("schedule", CONSTANT)
    # COMPACT's own model, the row every run starts from; its plain scores are compact_gemma.md's.
    compact = {r["row"]: r for r in json.loads((OUT / "compact_gemma.json").read_text())["rows"]}
    results["training_free"] = {k: v for k, v in results.get("training_free", {}).items() if isinstance(v, dict)}
    for target in sorted({*args.targets, *(r["target"] for r in results["runs"])}, key=list(SPLITS).index):
        free = results["training_free"].setdefault(target, {})
        free.update({k: compact[f"{target} full"][k] for k in ("dev", "ood", "test")})
        if any(k not in free for k in REPORTED):
            small, small_tok, _ = pruned(target, model, tokenizer)
            score(small.eval(), small_tok, texts, free)
            write(results)

    def run(
        target: str,
        lr: float,
        seed: int,
        bos_each_block: bool,
        tokens: int = CHOICE_TOKENS,
        split: tuple[int, int] | None = None,
        schedule: str = CONSTANT,
    ) -> dict:
        wanted = {
            "target": target,
            "lr": lr,
            "seed": seed,
            "tokens": tokens,
            "bos_each_block": bos_each_block,
            "split": list(split or SPLITS[target]),
            "schedule": schedule,
        }
        done = next((r for r in results["runs"] if all(r.get(k, False) == v for k, v in wanted.items())), None)
        if done:
            return done
        entry = {**wanted, "points": []}
        small, small_tok, seconds = heal(entry, model, tokenizer)
        small.save_pretrained(trained(entry))
        small_tok.save_pretrained(trained(entry))
        entry["train_seconds"] = round(seconds, 1)
        results["runs"].append(entry)
        print(json.dumps(entry), flush=True)
        write(results)
        return entry

    def final(entry: dict, keys=REPORTED) -> dict:  # test is scored only for the runs reported
        scores = entry.setdefault("final", {})
        if all(k in scores for k in keys):  # a resumed run's saved model need not be on disk any more
            return scores
        small = AutoModelForCausalLM.from_pretrained(trained(entry), dtype=torch.float32).eval()
        score(small, AutoTokenizer.from_pretrained(trained(entry)), texts, scores, keys)
        print(json.dumps(scores), flush=True)
        write(results)
        return scores

    # 1. The learning rate: 40%, one stream, seed 0; dev plain (first 20,000 characters) at the end.
    grid = [run("40%", lr, 0, False) for lr in args.grid]
    results["chosen_lr"] = lr = min(grid, key=lambda r: final(r, ("dev_budget",))["dev_budget"])["lr"]

    # 2. The blocks: 40%, every seed; the lower mean of dev plain + dev BOS (60,000 characters each).
    def dev_both(entry: dict) -> float:
        scores = final(entry, ("dev", "dev_bos"))
        return scores["dev"] + scores["dev_bos"]

    dev_sum = {
        bos: statistics.mean(dev_both(run("40%", lr, seed, bos)) for seed in args.seeds) for bos in (False, True)
    }
    results["chosen_bos_each_block"] = chosen = min(dev_sum, key=dev_sum.get)
    # 3. Reported: both block recipes at 40%, the chosen one at every target, each seed.
    for entry in [run("40%", lr, seed, not chosen) for seed in args.seeds]:
        final(entry)
    for target in args.targets:
        for seed in args.seeds:
            final(run(target, lr, seed, chosen))
    # 4. Every other run at the chosen rate and COMPACT's split (other blocks, targets, earlier stops) is reported too.
    for entry in results["runs"]:
        if entry["lr"] == lr and tuple(entry["split"]) == SPLITS[entry["target"]]:
            final(entry)
    # 5. Longer runs of the chosen recipe.
    for target in args.targets:
        for tokens in args.tokens:
            for seed in args.seeds:
                final(run(target, lr, seed, chosen, tokens))
    # 6. The split under distillation: OTHER_SPLITS with the chosen recipe, every seed. 7. A decaying LR at
    # each longer budget. Both scored on dev (and out of domain); test only for dev's pick at the target.
    unreported = ("dev", "dev_bos", "ood", "ood_bos")
    for target in args.targets:
        for split in OTHER_SPLITS.get(target, ()) if args.other_splits else ():
            for seed in args.seeds:
                final(run(target, lr, seed, chosen, split=split), unreported)
        for tokens in args.decay:
            for seed in args.seeds:
                peak, schedule = decayed(lr)
                final(run(target, peak, seed, chosen, tokens, schedule=schedule), unreported)
        candidates = dev_candidates(results).get(target)
        for entry in dev_pick(candidates).runs if candidates else []:
            final(entry)


def trained(run: dict) -> Path:
    suffix = f"-seed{run['seed']}" if run["seed"] else ""  # seed 0's runs predate --seeds
    bos = "-bos" if run.get("bos_each_block") else ""
    tokens = f"-{run['tokens']}" if run["tokens"] != CHOICE_TOKENS else ""  # longer runs keep their own copy
    schedule = "" if run["schedule"] == CONSTANT else f"-{run['schedule']}"
    split = split_suffix(run["target"], run["split"])
    return RUNS / f"heal-{run['target'].rstrip('%')}{split}-lr{run['lr']:g}{suffix}{bos}{tokens}{schedule}-trained"


if __name__ == "__main__":
    main()
