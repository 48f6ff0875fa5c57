"""``ProjCompConfig``: what to compress to and how, a ``peft.PeftConfig`` (``peft_type="PROJCOMP"``).

Once it and PEFT are imported, projected compression is registered with PEFT (:mod:`hf_projcomp._peft_hook`),
so ``peft.get_peft_model``, ``PeftModel.from_pretrained`` and ``AutoPeftModelForCausalLM`` know it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from peft import PeftConfig

from .peft_integration import PEFT_TYPE, require_registered

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

IMPORTANCE_METHODS = ("magnitude", "activation", "compact")
BASE_DTYPES = ("float32", "bfloat16", "float16")
# Written by hf_projcomp before selections moved into the weights file; still read.
LEGACY_FIELDS = ("hidden_indices", "intermediate_indices", "vocab_indices")


@dataclass
class ProjCompConfig(PeftConfig):
    """Configuration of a projected-compression adapter.

    Give the target either as sizes (``hidden_size`` and/or ``intermediate_size``; an omitted one keeps
    the base width) or as ``target_params``. Fields under "recorded" are filled when the adapter is
    built, so a saved adapter rebuilds on the same base without recomputing importance; the selected
    indices themselves are tensors in ``adapter_model.safetensors``.
    """

    hidden_size: int | None = field(default=None, metadata={"help": "Target d_model (hidden_size)."})
    intermediate_size: int | None = field(
        default=None, metadata={"help": "Target d_ff (intermediate_size), the same in every layer."}
    )
    vocab_size: int | None = field(
        default=None,
        metadata={"help": "Target vocabulary for importance='compact' (the tokenizer is pruned to match)."},
    )
    target_params: float | int | None = field(
        default=None,
        metadata={
            "help": "Target size instead of explicit widths: a fraction in (0, 1) of the base's "
            "non-embedding parameters, or an absolute non-embedding parameter count (int > 1); "
            "hidden_size and intermediate_size shrink by the same ratio. With importance='compact' it "
            "counts all parameters and COMPACT's solver splits it between vocabulary and d_ff."
        },
    )
    # Default chosen on dev text: docs/decisions.md#importance
    importance: str = field(
        default="activation",
        metadata={
            "help": "How the initial one-hot selections are ranked: 'activation' (default; Minitron-style, on "
            "calibration text or token batches), 'magnitude' (weight norms, no data: much worse on real models) "
            "or 'compact' (COMPACT's kept vocabulary and common-token act², on calibration text, pruning the "
            "tokenizer too)."
        },
    )
    calibration_data: str | None = field(
        default=None,
        metadata={
            "help": "Calibration text (a .txt/.jsonl path) when the adapter is built from this config alone "
            "(peft.get_peft_model, TRL's peft_config) with importance 'activation' or 'compact'; None: the "
            "WikiText-2 excerpt bundled with hf_projcomp. get_projcomp_model's calibration_data overrides it."
        },
    )
    base_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Cast the frozen base weights to this dtype ('float32', 'bfloat16', 'float16') to "
            "save memory; projections and A always train in float32. None keeps the base dtype."
        },
    )
    projection_rank: int | None = field(
        default=None,
        metadata={
            "help": "None (default): every P is a dense trainable matrix. An int r: every P is the fixed one-hot "
            "selection S plus a trainable low-rank U·Vᵀ (U rows × r, zero at the start; V cols × r), so P and "
            "its optimizer state cost r·(rows + cols) per P instead of rows·cols. r is clipped to min(rows, cols) "
            "of each P, where U·Vᵀ is already unconstrained."
        },
    )
    # Recorded when the adapter is built (base_model_name_or_path, PEFT's field: the Hub id when known).
    base_model_local_path: str | None = field(
        default=None,
        metadata={
            "help": "Recorded: the local directory the base was loaded from, if any. Where it exists when the "
            "adapter is loaded, base_model_name_or_path points there (AutoPeftModelForCausalLM loads it)."
        },
    )
    model_type: str | None = field(default=None, metadata={"help": "Recorded: base config.model_type."})
    architecture: str | None = field(default=None, metadata={"help": "Recorded: base model class name."})
    base_hidden_size: int | None = field(default=None, metadata={"help": "Recorded: base d_model."})
    base_intermediate_size: int | None = field(default=None, metadata={"help": "Recorded: base d_ff."})
    base_vocab_size: int | None = field(default=None, metadata={"help": "Recorded: base vocabulary size."})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "Recorded: number of layers."})
    training_data: str | None = field(default=None, metadata={"help": "Recorded by training: the data trained on."})
    training_tokens: int | None = field(default=None, metadata={"help": "Recorded by training: tokens trained on."})
    hidden_indices: list[int] | None = field(
        default=None, metadata={"help": "Legacy (adapters before 0.2 kept the selections here): d_model indices."}
    )
    intermediate_indices: list[list[int]] | None = field(
        default=None, metadata={"help": "Legacy: d_ff indices per layer."}
    )
    vocab_indices: list[int] | None = field(default=None, metadata={"help": "Legacy: kept token ids."})

    def __post_init__(self) -> None:
        require_registered()
        self.peft_type = PEFT_TYPE
        self.task_type = self.task_type or "CAUSAL_LM"
        super().__post_init__()
        local = self.base_model_local_path
        if local and self.base_model_name_or_path != local and os.path.isdir(local):
            # A loaded adapter whose base directory is on this machine: AutoPeftModelForCausalLM loads that
            # rather than downloading the Hub id recorded for elsewhere (the demo model has none to download).
            self.base_model_name_or_path = local
        if self.importance not in IMPORTANCE_METHODS:
            raise ValueError(f"importance must be one of {IMPORTANCE_METHODS}, got {self.importance!r}")
        if self.base_dtype is not None and self.base_dtype not in BASE_DTYPES:
            raise ValueError(f"base_dtype must be None or one of {BASE_DTYPES}, got {self.base_dtype!r}")
        self._check_sizes()
        check_projection_rank(self.projection_rank)
        sizes_given = any(v is not None for v in (self.hidden_size, self.intermediate_size, self.vocab_size))
        if self.target_params is not None:
            # A recorded config carries both: the request and the sizes it resolved to.
            if sizes_given and self.base_hidden_size is None:
                raise ValueError("give either target_params or hidden_size/intermediate_size, not both")
            _check_target_params(self.target_params)
        elif not sizes_given:
            raise ValueError(
                "a target is required: set hidden_size, intermediate_size (or vocab_size), or target_params"
            )

    def _check_sizes(self) -> None:
        for name in ("hidden_size", "intermediate_size", "vocab_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.vocab_size is not None and self.importance != "compact":
            raise ValueError("vocab_size is only used with importance='compact' (which prunes the tokenizer)")

    def to_dict(self) -> dict[str, Any]:
        """The fields as PEFT serialises them; legacy fields and ``projection_rank`` only when set (a dense
        adapter's file stays what earlier versions wrote and read)."""
        data = super().to_dict()
        for name in (*LEGACY_FIELDS, "projection_rank"):
            if data.get(name) is None:
                data.pop(name, None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProjCompConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ProjCompConfig fields: {unknown}")
        return cls(**data)


def _check_target_params(tp: object) -> None:
    if isinstance(tp, bool) or not isinstance(tp, (int, float)):
        raise TypeError(f"target_params must be a float fraction or an int count, got {type(tp).__name__}")
    if isinstance(tp, float) and not 0.0 < tp < 1.0:
        raise ValueError(f"target_params as a fraction must lie in (0, 1), got {tp}")
    if isinstance(tp, int) and tp <= 1:
        raise ValueError(f"target_params as a parameter count must be > 1, got {tp}")


def check_projection_rank(rank: object) -> None:
    """``TypeError``/``ValueError`` unless ``rank`` is a positive int or None (a dense P)."""
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)):
        raise TypeError(f"projection_rank must be a positive int or None (dense P), got {type(rank).__name__}")
    if rank is not None and rank < 1:
        raise ValueError(f"projection_rank must be a positive int or None (dense P), got {rank}")
