"""``ProjCompConfig``: what to compress to and how, serialised to JSON like a PEFT config."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

IMPORTANCE_METHODS = ("magnitude", "activation", "compact")
BASE_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ProjCompConfig:
    """Configuration of a projected-compression adapter.

    Give the target either as sizes (``hidden_size`` and/or ``intermediate_size``; an omitted one keeps
    the base width) or as ``target_params``. Fields under "recorded" are filled by
    ``get_projcomp_model`` so a saved adapter can be rebuilt on the same base without recomputing
    importance.
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
    importance: str = field(
        default="magnitude",
        metadata={
            "help": "How the initial one-hot selections are ranked: 'magnitude' (weight norms, no data), "
            "'activation' (Minitron-style, needs calibration_data token batches) or 'compact' (COMPACT's "
            "kept vocabulary and common-token act², needs calibration text and the tokenizer)."
        },
    )
    base_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Cast the frozen base weights to this dtype ('float32', 'bfloat16', 'float16') to "
            "save memory; projections and A always train in float32. None keeps the base dtype."
        },
    )
    # Recorded by get_projcomp_model.
    base_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Recorded: the base model's Hub id when it has one, else its local path."}
    )
    base_model_local_path: str | None = field(
        default=None, metadata={"help": "Recorded: the local directory the base was loaded from, if any."}
    )
    model_type: str | None = field(default=None, metadata={"help": "Recorded: base config.model_type."})
    architecture: str | None = field(default=None, metadata={"help": "Recorded: base model class name."})
    base_hidden_size: int | None = field(default=None, metadata={"help": "Recorded: base d_model."})
    base_intermediate_size: int | None = field(default=None, metadata={"help": "Recorded: base d_ff."})
    base_vocab_size: int | None = field(default=None, metadata={"help": "Recorded: base vocabulary size."})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "Recorded: number of layers."})
    hidden_indices: list[int] | None = field(
        default=None, metadata={"help": "Recorded: kept d_model indices (one global set), ascending."}
    )
    intermediate_indices: list[list[int]] | None = field(
        default=None, metadata={"help": "Recorded: kept d_ff indices per layer, ascending."}
    )
    vocab_indices: list[int] | None = field(
        default=None, metadata={"help": "Recorded: kept token ids (new id -> old id) when the vocabulary is pruned."}
    )
    training_data: str | None = field(default=None, metadata={"help": "Recorded by training: the data trained on."})
    training_tokens: int | None = field(default=None, metadata={"help": "Recorded by training: tokens trained on."})
    peft_type: str = field(default="PROJCOMP", metadata={"help": "Adapter type tag, as in PEFT configs."})
    task_type: str = field(default="CAUSAL_LM", metadata={"help": "Task type tag, as in PEFT configs."})

    def __post_init__(self) -> None:
        if self.importance not in IMPORTANCE_METHODS:
            raise ValueError(f"importance must be one of {IMPORTANCE_METHODS}, got {self.importance!r}")
        if self.base_dtype is not None and self.base_dtype not in BASE_DTYPES:
            raise ValueError(f"base_dtype must be None or one of {BASE_DTYPES}, got {self.base_dtype!r}")
        for name in ("hidden_size", "intermediate_size", "vocab_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.vocab_size is not None and self.importance != "compact":
            raise ValueError("vocab_size is only used with importance='compact' (which prunes the tokenizer)")
        sizes_given = any(v is not None for v in (self.hidden_size, self.intermediate_size, self.vocab_size))
        if self.target_params is not None:
            # A recorded config carries both: the request and the sizes it resolved to.
            if sizes_given and self.hidden_indices is None:
                raise ValueError("give either target_params or hidden_size/intermediate_size, not both")
            tp = self.target_params
            if isinstance(tp, bool) or not isinstance(tp, (int, float)):
                raise TypeError(f"target_params must be a float fraction or an int count, got {type(tp).__name__}")
            if isinstance(tp, float) and not 0.0 < tp < 1.0:
                raise ValueError(f"target_params as a fraction must lie in (0, 1), got {tp}")
            if isinstance(tp, int) and tp <= 1:
                raise ValueError(f"target_params as a parameter count must be > 1, got {tp}")
        elif not sizes_given:
            raise ValueError(
                "a target is required: set hidden_size, intermediate_size (or vocab_size), or target_params"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProjCompConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ProjCompConfig fields: {unknown}")
        return cls(**data)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``adapter_config.json`` into ``save_directory``."""
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> ProjCompConfig:
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}")
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
