"""``get_projcomp_model``: rank dimensions with the data given, record the selections, wrap as a PEFT model."""

from __future__ import annotations

from typing import Any

from peft import PeftModel, get_peft_model
from transformers import PreTrainedModel

from .architectures import get_arch_spec
from .config import ProjCompConfig
from .projection import unwrap
from .ranks import on_rank0_then_broadcast
from .selection import select


def get_projcomp_model(
    model: PreTrainedModel,
    config: ProjCompConfig,
    calibration_data: Any = None,
    tokenizer: Any = None,
    progress: bool = True,
    adapter_name: str = "default",
) -> PeftModel:
    """Wrap a supported ``AutoModelForCausalLM`` model for projected compression.

    The same object ``peft.get_peft_model(model, config)`` returns (a ``PeftModelForCausalLM`` whose
    ``base_model`` is a :class:`~hf_projcomp.ProjCompModel`), with the calibration data and tokenizer
    given here rather than named in the config.

    Args:
        model: the base model; it is frozen in place and stays reachable as ``.model`` of the tuner
            (``get_base_model()``).
        config: target sizes and importance method.
        calibration_data: for ``importance="activation"``, token-id batches or text with ``tokenizer``
            (see :func:`hf_projcomp.importance.calibration_batches` for the accepted forms); calibration
            text for ``importance="compact"`` (see :func:`hf_projcomp.compact.compact_prune`). None:
            ``config.calibration_data``, else the bundled WikiText-2 excerpt.
        tokenizer: the model's tokenizer, for importances that read text (default: loaded from the
            model's ``name_or_path``); with ``importance="compact"`` the pruned one is then available as
            ``.tokenizer`` and saved with the adapter.
        progress: show a progress bar over calibration batches.
        adapter_name: PEFT's adapter name.

    Under ``torch.distributed`` (``accelerate launch``, ``torchrun``) the selection is computed on
    rank 0 only and broadcast, so every rank trains the same projections.
    """
    if not isinstance(config, ProjCompConfig):
        raise TypeError(f"config must be a ProjCompConfig, got {type(config).__name__}")
    get_arch_spec(model.config)  # an unsupported model fails before any calibration work
    recorded, selection, pruned_tokenizer = on_rank0_then_broadcast(
        lambda: select(model, config, calibration_data, tokenizer, progress)
    )
    # The recorded config builds a placeholder of its sizes (no second importance pass), then takes the selection.
    peft_model = get_peft_model(model, recorded, adapter_name=adapter_name)
    unwrap(peft_model).set_selection(selection, pruned_tokenizer)
    return peft_model
