"""Which tensors are a projected-compression adapter, how PEFT's checkpoint keys map to them, and the
files that travel beside them (a pruned tokenizer).

:class:`AdapterTensors` is mixed into :class:`~hf_projcomp.ProjCompModel`: its ``state_dict`` is the
adapter (P, A, the compressed network's norms and the selected indices), never the frozen base, so
PEFT's adapter files and a plain Trainer's checkpoints stay small and resumable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from peft import PeftConfig
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys
from transformers import PreTrainedModel

from ..vocab.files import save_tokenizer
from .adapter_files import current_key, load_saved_tokenizer


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer (the compressed network's own trainable tensors)."""
    return "norm" in type(module).__name__.lower()


class AdapterTensors(nn.Module):
    """The adapter's tensors of a tuner holding ``projections`` (P and A), ``compressed`` (the network
    whose norms train) and the selection buffers; ``adapter_loaded`` runs after they are loaded."""

    projections: nn.ModuleDict
    compressed: PreTrainedModel
    selection_vocab: torch.Tensor | None
    tokenizer: Any  # the pruned tokenizer of a vocabulary-pruning adapter, else None

    def adapter_loaded(self) -> None:
        """Bring what derives from the loaded tensors up to date (the tuner overrides it)."""

    def load_companion_files(self, model_id: str | os.PathLike, **hub: Any) -> None:
        """After :meth:`PeftModel.load_adapter`: a vocabulary-pruning adapter's tokenizer, read from the same
        place (``subfolder``, ``revision``, ``token``, ``cache_dir`` as given there)."""
        if self.selection_vocab is not None and self.tokenizer is None:
            self.tokenizer = load_saved_tokenizer(model_id, **hub)

    def save_companion_files(self, directory: str | os.PathLike) -> None:
        """Beside PEFT's adapter files: the pruned tokenizer of a vocabulary-pruning adapter."""
        if self.tokenizer is not None:
            save_tokenizer(self.tokenizer, directory)

    def adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(state-dict name, parameter) of every P, A and norm weight, trainable or frozen."""
        yield from (("projections." + n, p) for n, p in self.projections.named_parameters())
        for name, module in self.compressed.named_modules():
            if is_norm(module):
                yield from ((f"compressed.{name}.{n}", p) for n, p in module.named_parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates: every P, A and norm weight."""
        return [p for _, p in self.adapter_parameters() if p.requires_grad]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """What an adapter checkpoint holds: P, A, the compressed model's norms and the selected indices
        (never base weights)."""
        out: dict[str, torch.Tensor] = dict(self.adapter_parameters())
        out.update((f"projections.{n}", b) for n, b in self.projections.named_buffers())
        out.update((n, b) for n, b in self.named_buffers(recurse=False) if b is not None)
        return out

    def state_dict(  # type: ignore[override]
        self, *, destination: dict | None = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, torch.Tensor]:
        """The adapter's tensors only (P, A, norms, indices): the base weights are frozen and belong to the
        base model."""
        out = destination if destination is not None else {}
        for name, tensor in self.adapter_state_dict().items():
            out[prefix + name] = tensor if keep_vars else tensor.detach()
        return out

    def load_state_dict(  # type: ignore[override]
        self, state_dict: dict[str, torch.Tensor], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load adapter tensors (what :meth:`state_dict` returns); ``strict`` checks the key sets."""
        own = self.adapter_state_dict()
        missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
        if strict and (missing or unexpected):
            raise ValueError(f"adapter does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        with torch.no_grad():
            for name in set(own) & set(state_dict):
                if state_dict[name].shape != own[name].shape:
                    raise ValueError(
                        f"adapter tensor {name} has shape {tuple(state_dict[name].shape)}, "
                        f"the model expects {tuple(own[name].shape)}"
                    )
                own[name].copy_(state_dict[name])
        self.adapter_loaded()
        return _IncompatibleKeys(missing, unexpected)

    # -- PEFT's hooks: which state-dict entries are the adapter's, and how checkpoint keys map back --
    @classmethod
    def _get_adapter_state_dict(
        cls,
        model: nn.Module,
        config: PeftConfig,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
        unwanted_adapter_names: list[str],
    ) -> dict[str, torch.Tensor]:
        # This tuner's state_dict() is its adapter already (base weights never enter it).
        return {k: v for k, v in state_dict.items() if k.startswith("base_model.")}

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        return key  # one adapter per model: keys carry no adapter name

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: PeftConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {current_key(k): v for k, v in state_dict.items()}


__all__ = ["AdapterTensors", "is_norm"]
