"""Which dimensions an adapter keeps: importance ranked over the base, then the top ones per target size.

Shared by both ways of building an adapter: :func:`hf_projcomp.get_projcomp_model` (data given as
arguments) and PEFT's own ``get_peft_model`` (data named in the config, or the bundled text).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PreTrainedModel

from .architectures import ffn_size, get_arch_spec
from .compact import CompactConfig, compact_select
from .config import ProjCompConfig
from .importance import activation_importance, calibration_batches, magnitude_importance, select_indices, top_k
from .importance.calibration import is_text
from .plan import Selection, build_plan
from .sizing import resolve_target_sizes, validate_target_sizes


def select(
    model: PreTrainedModel, config: ProjCompConfig, calibration_data: Any, tokenizer: Any, progress: bool
) -> tuple[ProjCompConfig, Selection, Any]:
    """(the config with what was built recorded, the selection, the pruned tokenizer or None).

    ``calibration_data`` None falls back to ``config.calibration_data``, then to the bundled WikiText-2
    excerpt; ``tokenizer`` None to the base model's own (for importances that read text).
    """
    spec = get_arch_spec(model.config)
    if config.importance != "magnitude":
        calibration_data = calibration_data if calibration_data is not None else _default_calibration(config)
        if tokenizer is None and (config.importance == "compact" or is_text(calibration_data)):
            tokenizer = _base_tokenizer(model)
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
    recorded = dataclasses.replace(
        record_base(model, config),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        vocab_size=None if vocab is None else len(vocab),
    )
    return recorded, Selection.from_lists(hidden, ffn, vocab), pruned_tokenizer


def record_base(model: PreTrainedModel, config: ProjCompConfig) -> ProjCompConfig:
    """``config`` with the shapes of the base it is built on recorded, so the adapter refuses another
    base (its name is recorded when the model is built, see ``ProjCompModel``)."""
    return dataclasses.replace(
        config,
        base_model_name_or_path=config.base_model_name_or_path or getattr(model, "name_or_path", None) or None,
        model_type=model.config.model_type,
        architecture=type(model).__name__,
        base_hidden_size=model.config.hidden_size,
        base_intermediate_size=ffn_size(model.config),
        base_vocab_size=model.config.vocab_size,
        num_hidden_layers=model.config.num_hidden_layers,
    )


def _default_calibration(config: ProjCompConfig) -> str:
    if config.calibration_data:
        return config.calibration_data
    from .texts import CALIBRATION, bundled_text

    return str(bundled_text(CALIBRATION, path=True))


def _base_tokenizer(model: PreTrainedModel) -> Any:
    from transformers import AutoTokenizer

    name = getattr(model, "name_or_path", None)
    if not name:
        raise ValueError(
            "this importance reads text: pass tokenizer=... (the model has no name_or_path to load it from), "
            "or use importance='magnitude' (no data)"
        )
    return AutoTokenizer.from_pretrained(name)


def _compact_selection(
    model: PreTrainedModel, config: ProjCompConfig, calibration_data: Any, tokenizer: Any, progress: bool
) -> tuple[list[int], list[list[int]], list[int] | None, Any]:
    """COMPACT's kept vocabulary and d_ff channels, and d_model ranked by common-token act² (selections
    only: projected compression starts from the base's own values, so no down_proj refit)."""
    if tokenizer is None:
        raise ValueError("importance='compact' needs the model's tokenizer: pass tokenizer=...")
    base = model.config
    if config.target_params is not None:
        # COMPACT's solver splits the budget between vocabulary and d_ff; d_model keeps its width.
        compact = CompactConfig(target_params=config.target_params, refit_ffn=False)
        hidden_size = base.hidden_size
    else:
        hidden_size = config.hidden_size or base.hidden_size
        split = (config.vocab_size or base.vocab_size, config.intermediate_size or ffn_size(base))
        validate_target_sizes(base, hidden_size, split[1], split[0])
        compact = CompactConfig(split=split, refit_ffn=False)
    result = compact_select(model, tokenizer, calibration_data, compact, progress=progress)
    vocab = None if result.kept_token_ids is None else result.kept_token_ids.tolist()
    ffn = [idx.tolist() for idx in result.intermediate_indices]
    return top_k(result.scores.hidden, hidden_size).tolist(), ffn, vocab, result.tokenizer


__all__ = ["record_base", "select"]
