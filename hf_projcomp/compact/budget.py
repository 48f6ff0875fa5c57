"""The vocabulary / FFN split that reaches a parameter budget.

Parameters are counted exactly on the meta device (``count_target_parameters``). For each candidate
FFN width the vocabulary size that fills the rest of the budget follows in closed form, because the
count is affine in the vocabulary size. Which candidate wins is decided by the caller (COMPACT
scores each on held-out calibration text; the paper leaves the split to hand tuning).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from transformers import PreTrainedModel

from ..architectures import ffn_size, get_arch_spec
from ..sizing import count_target_parameters


@dataclass(frozen=True)
class Split:
    vocab_size: int
    intermediate_size: int
    parameters: int


def resolve_budget(model: PreTrainedModel, target_params: float | int) -> int:
    """An absolute parameter count from a fraction in (0, 1) of the model's total or a count."""
    total = model.num_parameters()
    if isinstance(target_params, bool) or not isinstance(target_params, (int, float)):
        raise TypeError(f"target_params must be a float fraction or an int count, got {type(target_params).__name__}")
    if isinstance(target_params, float):
        if not 0.0 < target_params < 1.0:
            raise ValueError(f"target_params as a fraction must lie in (0, 1), got {target_params}")
        return round(target_params * total)
    if not 0 < target_params < total:
        raise ValueError(f"target_params must be below the model's {total:,} parameters, got {target_params:,}")
    return target_params


def candidate_splits(
    model: PreTrainedModel,
    budget: int,
    min_vocab: int,
    ffn_fractions: tuple[float, ...],
    multiple: int = 8,
    max_mixed: int | None = None,
) -> list[Split]:
    """Feasible (vocabulary, d_ff) pairs at ``budget`` parameters: FFN-only when it fits, then one
    per FFN fraction (in the order given, at most ``max_mixed`` of them).

    ``min_vocab`` is the smallest vocabulary that still holds every required token; candidates
    below it, or above the base vocabulary, are dropped, so small budgets fall through to the
    narrower FFN fractions.
    """
    config = model.config
    width_multiple = get_arch_spec(config).width_multiple
    multiple = math.lcm(multiple, width_multiple)
    hidden, base_vocab, base_ffn = config.hidden_size, config.vocab_size, ffn_size(config)
    splits = []
    # FFN only (the whole vocabulary kept): the widest d_ff that fits, in steps of ``multiple``
    # channels unless such a step would miss the budget by more than half a percent.
    at_zero = count_target_parameters(model, hidden, 1, vocab_size=base_vocab)
    per_channel = count_target_parameters(model, hidden, 2, vocab_size=base_vocab) - at_zero
    at_zero -= per_channel
    step = multiple if multiple * per_channel <= 0.005 * budget else width_multiple
    inter = step * ((budget - at_zero) // (per_channel * step))
    if 0 < inter < base_ffn:
        splits.append(Split(base_vocab, inter, at_zero + inter * per_channel))
    mixed = 0
    for fraction in ffn_fractions:
        if max_mixed is not None and mixed >= max_mixed:
            break
        inter = max(multiple, round(base_ffn * fraction / multiple) * multiple)
        inter = min(inter, base_ffn)
        at_one = count_target_parameters(model, hidden, inter, vocab_size=1)
        per_row = count_target_parameters(model, hidden, inter, vocab_size=2) - at_one
        vocab = 1 + (budget - at_one) // per_row
        if min_vocab <= vocab <= base_vocab and (vocab, inter) != (base_vocab, base_ffn):
            splits.append(Split(vocab, inter, at_one + (vocab - 1) * per_row))
            mixed += 1
    return splits
