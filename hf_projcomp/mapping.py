"""``get_projcomp_model``: rank dimensions, record the selections, wrap the base model."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from .architectures import get_arch_spec
from .compact import compact_prune
from .config import ProjCompConfig
from .distributed import on_rank0_then_broadcast
from .loading import hub_id_of
from .importance import activation_importance, calibration_batches, magnitude_importance, select_indices, top_k
from .plan import build_plan
from .projection import ProjCompModel
from .sizing import resolve_target_sizes, validate_target_sizes


def get_projcomp_model(
    model: PreTrainedModel,
    config: ProjCompConfig,
    calibration_data: Any = None,
    tokenizer: Any = None,
    progress: bool = True,
) -> ProjCompModel:
    """Wrap a supported ``AutoModelForCausalLM`` model for projected compression.

    Args:
        model: the base model; it is frozen in place and stays reachable as ``.base_model``.
        config: target sizes and importance method.
        calibration_data: for ``importance="activation"``, token-id batches or text with ``tokenizer``
            (see :func:`hf_projcomp.importance.calibration_batches` for the accepted forms); calibration
            text for ``importance="compact"`` (see :func:`hf_projcomp.compact.compact_prune`).
        tokenizer: the model's tokenizer, required by ``importance="compact"`` (the pruned one is then
            available as ``.tokenizer`` and saved with the adapter) and to tokenise text for
            ``importance="activation"``.
        progress: show a progress bar over calibration batches.

    Under ``torch.distributed`` (``accelerate launch``, ``torchrun``) the selection is computed on
    rank 0 only and broadcast, so every rank trains the same projections.

    Returns:
        A :class:`ProjCompModel` whose selections are recorded in its ``projcomp_config``.
    """
    if not isinstance(config, ProjCompConfig):
        raise TypeError(f"config must be a ProjCompConfig, got {type(config).__name__}")
    get_arch_spec(model.config)  # an unsupported model fails before any calibration work
    recorded, pruned_tokenizer = on_rank0_then_broadcast(
        lambda: _select(model, config, calibration_data, tokenizer, progress)
    )
    return ProjCompModel(model, recorded, pruned_tokenizer)


def _select(
    model: PreTrainedModel, config: ProjCompConfig, calibration_data: Any, tokenizer: Any, progress: bool
) -> tuple[ProjCompConfig, Any]:
    """The config with its recorded selections (and the pruned tokenizer with ``"compact"``)."""
    spec = get_arch_spec(model.config)
    pruned_tokenizer, vocab = None, None
    if config.importance == "compact":
        hidden, ffn, vocab, pruned_tokenizer = _compact_selection(model, config, calibration_data, tokenizer, progress)
        hidden_size, intermediate_size = len(hidden), len(ffn[0])
    else:
        hidden_size, intermediate_size = resolve_target_sizes(
            model, config.hidden_size, config.intermediate_size, config.target_params
        )
        if config.importance == "activation":
            batches = calibration_batches(calibration_data, tokenizer=tokenizer, progress=progress)
            scores = activation_importance(model, spec, batches, progress=progress)
        else:
            scores = magnitude_importance(model, build_plan(model, spec, hidden_size))
        hidden, ffn = select_indices(scores, hidden_size, intermediate_size)
    name = config.base_model_name_or_path or getattr(model, "name_or_path", None) or None
    local = os.fspath(Path(name).expanduser().resolve()) if name and Path(name).expanduser().is_dir() else None
    recorded = dataclasses.replace(
        config,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        # A Hub id travels with the adapter; a machine's cache path only as the local hint.
        base_model_name_or_path=hub_id_of(name) or local,
        base_model_local_path=local,
        model_type=model.config.model_type,
        architecture=type(model).__name__,
        base_hidden_size=model.config.hidden_size,
        base_intermediate_size=model.config.intermediate_size,
        base_vocab_size=model.config.vocab_size,
        num_hidden_layers=model.config.num_hidden_layers,
        vocab_size=None if vocab is None else len(vocab),
        hidden_indices=hidden,
        intermediate_indices=ffn,
        vocab_indices=vocab,
    )
    return recorded, pruned_tokenizer


def _compact_selection(
    model: PreTrainedModel, config: ProjCompConfig, calibration_data: Any, tokenizer: Any, progress: bool
) -> tuple[list[int], list[list[int]], list[int] | None, Any]:
    """COMPACT's kept vocabulary and d_ff channels, and d_model ranked by common-token act²."""
    if tokenizer is None:
        raise ValueError("importance='compact' needs the model's tokenizer: pass tokenizer=...")
    base = model.config
    if config.target_params is not None:
        # COMPACT's solver splits the budget between vocabulary and d_ff; d_model keeps its width.
        _, small_tok, result = compact_prune(
            model, tokenizer, calibration_data, config.target_params, progress=progress, return_result=True
        )
        hidden_size = base.hidden_size
    else:
        hidden_size = config.hidden_size or base.hidden_size
        split = (config.vocab_size or base.vocab_size, config.intermediate_size or base.intermediate_size)
        validate_target_sizes(base, hidden_size, split[1], split[0])
        _, small_tok, result = compact_prune(
            model, tokenizer, calibration_data, split=split, progress=progress, return_result=True
        )
    vocab = None if result.kept_token_ids is None else result.kept_token_ids.tolist()
    ffn = [idx.tolist() for idx in result.intermediate_indices]
    return top_k(result.scores.hidden, hidden_size).tolist(), ffn, vocab, small_tok
