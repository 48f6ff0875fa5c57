"""What the training benchmarks (train_quality.py, heal_gemma.py) share: scores at token budgets along a run."""

from __future__ import annotations

from collections.abc import Callable

from transformers import TrainerCallback


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
