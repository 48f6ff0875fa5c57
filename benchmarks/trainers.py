"""What the training benchmarks (train_quality.py, heal_gemma.py) share: the calibration text's token
blocks, a plain Trainer with the library's distillation, and scores at token budgets along a run."""

from __future__ import annotations

from collections.abc import Callable

from datasets import Dataset
from transformers import Trainer, TrainerCallback

from hf_projcomp.texts import CALIBRATION, bundled_text
from hf_projcomp.training import DistillationMixin, Teacher


def token_blocks(tokenizer, sequence: int, max_tokens: int | None = None) -> Dataset:
    """The bundled calibration text in ``sequence``-token blocks (labels = inputs): all of it, or the
    blocks covering ``max_tokens`` plus one, so a shorter run's pool is a prefix of a longer one's."""
    ids = tokenizer(bundled_text(CALIBRATION)).input_ids
    if max_tokens is not None:
        if len(ids) < max_tokens + sequence:
            raise SystemExit(f"the calibration text has {len(ids):,} tokens, fewer than --tokens {max_tokens:,}")
        ids = ids[: max_tokens + sequence]
    blocks = [ids[i : i + sequence] for i in range(0, len(ids) - sequence + 1, sequence)]
    return Dataset.from_dict({"input_ids": blocks, "labels": blocks})


class RetrainTrainer(DistillationMixin, Trainer):
    """A plain Trainer for a hard-pruned model, with the same distillation as ProjCompTrainer."""

    def __init__(self, *args, teacher: Teacher, distill_alpha: float, **kwargs) -> None:
        self.init_distillation(teacher, distill_alpha)
        super().__init__(*args, **kwargs)


class BudgetEval(TrainerCallback):
    """``evaluate()`` (a dict of scores of the model so far) whenever the tokens trained reach the next
    budget, recorded in ``points`` as ``{"tokens": ..., **scores}``."""

    def __init__(self, evaluate: Callable[[], dict], budgets: list[int], tokens_per_step: int) -> None:
        self.evaluate, self.budgets, self.tokens_per_step, self.points = evaluate, sorted(budgets), tokens_per_step, []

    def on_step_end(self, args, state, control, **kwargs):
        tokens = state.global_step * self.tokens_per_step
        while self.budgets and tokens >= self.budgets[0]:
            self.budgets.pop(0)
            self.points.append({"tokens": tokens, **self.evaluate()})
