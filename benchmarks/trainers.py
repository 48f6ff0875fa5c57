"""What the training benchmarks (train_quality.py, heal_gemma.py, recovery_curve.py) share: scores at token budgets
along a run, and the Trainer arguments of a constant-LR CPU run."""

from __future__ import annotations

from collections.abc import Callable

from transformers import TrainerCallback, TrainingArguments


def constant_lr_arguments(
    output_dir: str, micro_batch: int, accumulation: int, steps: int, learning_rate: float, seed: int
) -> TrainingArguments:
    """A CPU run of ``steps`` optimizer steps at a constant learning rate after 2 warm-up steps (so a shorter
    budget is a prefix of a longer run), no weight decay, gradients clipped at 1, a loss logged every step."""
    return TrainingArguments(
        output_dir,
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=accumulation,
        max_steps=steps,
        learning_rate=learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=2,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=seed,
        disable_tqdm=True,
    )


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
