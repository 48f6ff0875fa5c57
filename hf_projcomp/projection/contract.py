"""PEFT's tuner contract for a method that runs a separate, smaller network with one adapter.

PEFT's ``PeftModel`` drives its tuner (``base_model``) through ``BaseTuner``'s methods:
``disable_adapter()`` through ``disable_adapter_layers`` and ``get_model_status`` (which needs a
``BaseTuner`` holding at least one ``BaseTunerLayer``), ``set_adapter``, ``set_requires_grad``,
``unload``, ``add_adapter`` through ``inject_adapter``... :class:`SingleAdapterTuner` implements each
of them for projected compression, or refuses it with a ``NotImplementedError`` that names what to
call instead. Nothing is forwarded implicitly: the few attributes of the network that runs, which
Trainer, TRL and PEFT read (``generation_config``, ``gradient_checkpointing_enable``...), are listed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

# What Trainer, TRL and PEFT read of the model that runs (the compressed network); looked up there.
COMPRESSED_ATTRIBUTES = frozenset(
    {
        "generation_config",
        "main_input_name",
        "get_input_embeddings",
        "get_output_embeddings",
        "add_model_tags",
        "model_tags",
        "enable_input_require_grads",
        "disable_input_require_grads",
        "gradient_checkpointing_enable",
        "gradient_checkpointing_disable",
        "activation_checkpointing_enable",
        "activation_checkpointing_disable",
        "is_gradient_checkpointing",
        "is_activation_checkpointing",
        "supports_gradient_checkpointing",
        "prepare_inputs_for_generation",
        "can_generate",
        "dtype",
        "device",
        "num_parameters",
        "warnings_issued",
    }
)
# What describes the checkpoint the adapter was built on; looked up on the base.
BASE_ATTRIBUTES = frozenset({"name_or_path"})


class AdapterState(nn.Module, BaseTunerLayer):
    """The adapter's on/off state as PEFT's ``get_model_status`` reads a tuner layer. It holds no
    tensors: P, A and the norms belong to the tuner, whose state dict PEFT saves."""

    def __init__(self, adapter_name: str) -> None:
        super().__init__()
        self._active_adapter = adapter_name
        self._disable_adapters = False
        self.merged_adapters: list[str] = []

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        """No tensors to move (PEFT calls this on every tuner layer after a ``low_cpu_mem_usage`` load)."""


class SingleAdapterTuner(BaseTuner):
    """Base of :class:`~hf_projcomp.ProjCompModel`: ``self.model`` is the base model (PEFT's name; what
    ``PeftModel.get_base_model()`` returns), ``self.compressed`` the network that runs while the
    adapter is enabled. Subclasses set both, ``self.adapter_state``, ``self.peft_config`` and
    ``self.active_adapter``, and implement :meth:`adapter_parameters`."""

    active_adapter: str  # one adapter: never PEFT's list

    def adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(state-dict name, parameter) of everything the adapter trains."""
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        try:
            return nn.Module.__getattr__(self, name)
        except AttributeError:
            if name in COMPRESSED_ATTRIBUTES:
                return getattr(nn.Module.__getattr__(self, "compressed"), name)
            if name in BASE_ATTRIBUTES:
                return getattr(nn.Module.__getattr__(self, "model"), name)
            raise

    @property
    def active_adapters(self) -> list[str]:
        return [self.active_adapter]

    @property
    def adapters_disabled(self) -> bool:
        """Whether forward runs the base model (inside ``PeftModel.disable_adapter()``)."""
        return self.adapter_state._disable_adapters

    # -- switching -------------------------------------------------------------------------------
    def disable_adapter_layers(self) -> None:
        """Run the base model's own forward until :meth:`enable_adapter_layers`."""
        self.adapter_state._disable_adapters = True

    def enable_adapter_layers(self) -> None:
        self.adapter_state._disable_adapters = False

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Only this model's one adapter can be active; ``inference_mode`` freezes it."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        self._check_own(names, "set_adapter")
        if inference_mode:
            self.set_requires_grad(names, requires_grad=False)

    def set_requires_grad(self, adapter_names: str | Sequence[str], requires_grad: bool = True) -> None:
        """Make the adapter's P, A and norms trainable (or frozen)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        self._check_own(names, "set_requires_grad")
        for _, param in self.adapter_parameters():
            param.requires_grad_(requires_grad)

    def _check_own(self, names: list[str], method: str) -> None:
        other = [n for n in names if n != self.active_adapter]
        if other:
            raise ValueError(
                f"{method}: a projected-compression model holds one adapter, {self.active_adapter!r}; got {other}"
            )

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """Nothing to cast: P, A and the norms are float32 whatever the base holds."""

    # -- what one adapter over a separate network cannot do ---------------------------------------
    def inject_adapter(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "a projected-compression model holds exactly one adapter (add_adapter and load_adapter under another "
            "name are not supported): load a second adapter on a fresh base with PeftModel.from_pretrained, or "
            "merge_and_unload() this one and add adapters to the merged model"
        )

    def _create_and_replace(self, *args: Any, **kwargs: Any) -> None:
        self.inject_adapter()

    def delete_adapter(self, adapter_name: str) -> None:
        raise NotImplementedError(
            "a projected-compression model holds exactly one adapter: unload() returns the base model without it"
        )

    def merge_adapter(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "the compressed model has other shapes than the base, so the adapter cannot be merged into the base in "
            "place: merge_and_unload() returns the smaller merged model"
        )

    def unmerge_adapter(self, *args: Any, **kwargs: Any) -> None:
        self.merge_adapter()

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return False

    def unload(self) -> torch.nn.Module:
        """The base model without the adapter (frozen, in the dtype it was held in)."""
        return self.model

    # -- parameter counts ---------------------------------------------------------------------------
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) parameter counts; ``all`` = base + adapter, as PEFT reports it."""
        adapter = sum(p.numel() for _, p in self.adapter_parameters())
        trainable = sum(p.numel() for _, p in self.adapter_parameters() if p.requires_grad)
        base = sum(p.numel() for p in self.model.parameters())
        return trainable, base + adapter

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        )


__all__ = ["BASE_ATTRIBUTES", "COMPRESSED_ATTRIBUTES", "AdapterState", "SingleAdapterTuner"]
