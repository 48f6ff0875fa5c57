"""``get_projcomp_model``: rank dimensions, record the selections, wrap the base model."""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PreTrainedModel

from .architectures import get_arch_spec
from .config import ProjCompConfig
from .importance import activation_importance, calibration_batches, magnitude_importance, select_indices
from .plan import build_plan
from .projection import ProjCompModel
from .pruning import resolve_target_sizes


def get_projcomp_model(
    model: PreTrainedModel,
    config: ProjCompConfig,
    calibration_data: Any = None,
    progress: bool = True,
) -> ProjCompModel:
    """Wrap a supported ``AutoModelForCausalLM`` model for projected compression.

    Args:
        model: the base model; it is frozen in place and stays reachable as ``.base_model``.
        config: target sizes and importance method.
        calibration_data: token-id batches for ``importance="activation"`` (see
            :func:`hf_projcomp.importance.calibration_batches` for the accepted forms).
        progress: show a progress bar over calibration batches.

    Returns:
        A :class:`ProjCompModel` whose selections are recorded in its ``projcomp_config``.
    """
    if not isinstance(config, ProjCompConfig):
        raise TypeError(f"config must be a ProjCompConfig, got {type(config).__name__}")
    spec = get_arch_spec(model.config)
    hidden_size, intermediate_size = resolve_target_sizes(
        model, config.hidden_size, config.intermediate_size, config.target_params
    )
    if config.importance == "activation":
        batches = calibration_batches(calibration_data)
        scores = activation_importance(model, spec, batches, progress=progress)
    else:
        scores = magnitude_importance(model, build_plan(model, spec, hidden_size))
    hidden, ffn = select_indices(scores, hidden_size, intermediate_size)
    recorded = dataclasses.replace(
        config,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        base_model_name_or_path=config.base_model_name_or_path or getattr(model, "name_or_path", None) or None,
        model_type=model.config.model_type,
        architecture=type(model).__name__,
        base_hidden_size=model.config.hidden_size,
        base_intermediate_size=model.config.intermediate_size,
        base_vocab_size=model.config.vocab_size,
        num_hidden_layers=model.config.num_hidden_layers,
        hidden_indices=hidden,
        intermediate_indices=ffn,
    )
    return ProjCompModel(model, recorded)
