"""``ProjCompModel``: a frozen base model plus trainable projections, running at the compressed width.

The compressed network is an ordinary transformers model of the base class built from the smaller
config (``self.target``). Its d_model norms (and q/k norms) are its own trainable parameters; every
other shrinking weight is supplied at call time as ``W_c = P_out · W · P_in + A`` through
``torch.func.functional_call``, so the forward pass is exactly the vanilla model's and
``merge_and_unload`` only has to write each ``W_c`` once.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call
from torch.nn.modules.module import _IncompatibleKeys
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedModel

from ..architectures import VOCAB, get_arch_spec
from ..config import WEIGHTS_NAME, ProjCompConfig
from ..export import CompressionSummary, save_compressed
from ..hard_pruning import pruned_tensors
from ..io import atomic_directory
from ..plan import Selection, build_plan
from ..target import build_target_model, cast_parameters
from ..vocab.files import SIDE_FILES, save_tokenizer
from .layer import Projection


def _key(param_name: str) -> str:
    # ModuleDict keys can't hold dots; the parameter's module path is unique and readable.
    return param_name.removesuffix(".weight").replace(".", "-")


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


class ProjCompModel(nn.Module):
    """Projected-compression wrapper; build it with :func:`get_projcomp_model` or :meth:`from_pretrained`.

    Trainable: every P_in/P_out/A (``projections``) and the target model's norms. Frozen: the whole
    base model. Call it like the base model (``input_ids``, ``labels``, ...).
    """

    def __init__(self, model: PreTrainedModel, config: ProjCompConfig, tokenizer: Any = None) -> None:
        super().__init__()
        if config.hidden_indices is None or config.intermediate_indices is None:
            raise ValueError("config has no recorded selections; build the model with get_projcomp_model()")
        check_base_matches(model.config, config)
        spec = get_arch_spec(model.config)
        # What merge_and_unload returns: the base's own precision, not base_dtype's memory saving.
        self.output_dtype = model.dtype
        model.requires_grad_(False)
        if config.base_dtype is not None:
            model.to(getattr(torch, config.base_dtype))
        self.base_model = model
        self.projcomp_config = config
        if config.vocab_indices is not None and tokenizer is None:
            raise ValueError("this adapter prunes the vocabulary: pass the pruned tokenizer it was built with")
        # The pruned tokenizer when the vocabulary shrinks (importance="compact"), else None.
        self.tokenizer = tokenizer

        selection = Selection.from_lists(config.hidden_indices, config.intermediate_indices, config.vocab_indices)
        self.plan = build_plan(model, spec, selection.hidden_size)
        self.projections = nn.ModuleDict()
        for entry in self.plan.weights:
            rows = selection.index(entry.out_dim, entry.layer)
            gathered = entry.out_dim == VOCAB
            self.projections[_key(entry.name)] = Projection(
                model.get_submodule(entry.name.removesuffix(".weight")),
                in_index=selection.index(entry.in_dim, entry.layer),
                out_index=None if gathered else rows,
                out_chunks=entry.out_chunks,
                scale=entry.scale,
                row_index=rows if gathered else None,
            )
        with torch.no_grad():
            # Starts as the hard-pruned model; the planned weights there are only placeholders. It
            # trains in float32 whatever the base holds, like P and A.
            self.target = build_target_model(
                model, selection, pruned_tensors(model, self.plan, selection), dtype=torch.float32
            )
        self._projected_names = [entry.name for entry in self.plan.weights]
        target_params = dict(self.target.named_parameters(remove_duplicate=False))
        self._target_params = {name: target_params[name] for name in self._projected_names}
        self._amortized = False
        self._step_vjps: list = []
        self.target.requires_grad_(False)
        for module in self.target.modules():
            if _is_norm(module):
                module.requires_grad_(True)
        self.target.train(model.training)

    # -- forward ---------------------------------------------------------------------------------
    @property
    def config(self) -> PretrainedConfig:
        """The compressed model's config (what transformers tooling reads)."""
        return self.target.config

    def projected_weights(self) -> dict[str, torch.Tensor]:
        """Every ``W_c`` by its parameter name in the target model (with autograd unless disabled)."""
        return {name: proj() for name, proj in zip(self._projected_names, self.projections.values())}

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """The compressed model's forward (arguments as the base class's ``forward``)."""
        kwargs.update(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        if self._amortized:
            if not self._step_vjps:
                self.materialize()
            return self.target(**kwargs)
        # Tied head and embedding share one projected tensor: functional_call writes it to both.
        return functional_call(self.target, self.projected_weights(), (), kwargs, tie_weights=True, strict=False)

    # -- amortised optimizer step ------------------------------------------------------------------
    def set_amortized(self, enabled: bool = True) -> None:
        """Switch to computing every ``W_c`` once per optimizer step (see :meth:`materialize`).

        While enabled, the projected weights live in the target model as ordinary parameters that
        collect ∂L/∂W_c over all micro-batches (and that DDP all-reduces like any weight);
        :meth:`push_gradients` then moves them into P and A once. :class:`ProjCompTrainer` drives it.
        """
        self._amortized = enabled
        self._step_vjps = []
        for name in self._projected_names:
            param = self._target_params[name]
            param.requires_grad_(enabled)
            param.grad = None

    def materialize(self) -> None:
        """Compute every ``W_c`` once into the target's weights, keeping each product's VJP."""
        self._step_vjps = []
        for name, proj in zip(self._projected_names, self.projections.values()):
            weight, vjp = proj.forward_with_vjp()
            param = self._target_params[name]
            with torch.no_grad():
                param.copy_(weight)
            self._step_vjps.append((proj, param, vjp))

    def push_gradients(self) -> None:
        """Send the accumulated ∂L/∂W_c through the products into P and A (once per optimizer step);
        the next forward computes fresh ``W_c`` from the updated projections."""
        for proj, param, vjp in self._step_vjps:
            if param.grad is not None:
                proj.accumulate_grad(vjp(param.grad))
                param.grad = None
        self._step_vjps = []

    # -- parameters ------------------------------------------------------------------------------
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """What an adapter checkpoint holds: P, A and the target's norms (never base weights)."""
        return {name: p for name, p in self._adapter_parameters()}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates: every P, A and norm weight."""
        return [p for _, p in self._adapter_parameters() if p.requires_grad]

    def _adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        yield from (("projections." + n, p) for n, p in self.projections.named_parameters())
        for name, module in self.target.named_modules():
            if _is_norm(module):
                yield from ((f"target.{name}.{n}", p) for n, p in module.named_parameters())

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) parameter counts; ``all`` = base + adapter, as PEFT reports it."""
        adapter = sum(p.numel() for _, p in self._adapter_parameters())
        trainable = sum(p.numel() for _, p in self._adapter_parameters() if p.requires_grad)
        base = sum(p.numel() for p in self.base_model.parameters())
        return trainable, base + adapter

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    # -- merge -----------------------------------------------------------------------------------
    @torch.no_grad()
    def merge_and_unload(self, dtype: torch.dtype | None = None) -> PreTrainedModel:
        """Compute every ``W_c`` once and return a vanilla model of the base class with the smaller config,
        in ``dtype`` (default: the dtype the base model had when it was wrapped)."""
        merged = copy.deepcopy(self.target)
        params = dict(merged.named_parameters(remove_duplicate=False))
        for name, weight in self.projected_weights().items():
            params[name].copy_(weight)
        cast_parameters(merged, dtype or self.output_dtype)
        merged.requires_grad_(True)
        merged.eval()
        return merged

    def card_settings(self) -> dict[str, Any]:
        """The configuration a model card reports (targets and importance, not the indices)."""
        names = ("importance", "target_params", "hidden_size", "intermediate_size", "vocab_size", "base_dtype")
        return {n: getattr(self.projcomp_config, n) for n in names if getattr(self.projcomp_config, n) is not None}

    def save_merged(
        self, out_dir: str | os.PathLike, tokenizer: Any = None, summary: CompressionSummary | None = None, **kwargs: Any
    ) -> Path:
        """:meth:`merge_and_unload`, then :func:`~hf_projcomp.export.save_compressed`: config, safetensors,
        tokenizer (the pruned one when the vocabulary shrank) and model card, written atomically and
        verified by reloading. ``kwargs`` go to ``save_compressed`` (``overwrite``, ``repo_id``...)."""
        tokenizer = self.tokenizer if self.tokenizer is not None else tokenizer
        if tokenizer is None:
            raise ValueError("save_merged needs the base model's tokenizer: pass tokenizer=...")
        merged = self.merge_and_unload()
        return save_compressed(merged, tokenizer, out_dir, summary or self.compression_summary(merged), **kwargs)

    def compression_summary(self, merged: PreTrainedModel, **kwargs: Any) -> CompressionSummary:
        """What the model card of ``merged`` reports: base, sizes, settings and the training data and
        tokens the adapter recorded; ``kwargs`` add to or override those fields."""
        config = self.projcomp_config
        fields = {"base_model": config.base_model_name_or_path, "settings": self.card_settings(),
                  "training_data": config.training_data, "training_tokens": config.training_tokens, **kwargs}
        return CompressionSummary.from_configs(
            "projected-compression", self.base_model.config, merged.config, self.base_model.num_parameters(),
            merged.num_parameters(), **fields,
        )

    # -- save / load -----------------------------------------------------------------------------
    def state_dict(  # type: ignore[override]
        self, *, destination: dict | None = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, torch.Tensor]:
        """The adapter's tensors only (P, A, norms): the base weights are frozen and belong to the base
        model, so checkpoints (a plain Trainer's included) stay small and resumable."""
        out = destination if destination is not None else {}
        for name, tensor in self.adapter_state_dict().items():
            out[prefix + name] = tensor if keep_vars else tensor.detach()
        return out

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, assign: bool = False) -> Any:
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
        self._step_vjps = []  # W_c materialised from the old values are stale
        return _IncompatibleKeys(missing, unexpected)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (and the pruned tokenizer, if
        any) into ``save_directory``, atomically (see :func:`hf_projcomp.io.atomic_directory`; into an
        existing directory such as a Trainer checkpoint the config moves in last)."""
        with atomic_directory(save_directory, merge=True, owned=SIDE_FILES) as tmp:
            if self.tokenizer is not None:
                save_tokenizer(self.tokenizer, tmp)
            state = {k: v.contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, os.path.join(tmp, WEIGHTS_NAME), metadata={"format": "pt"})
            self.projcomp_config.save_pretrained(tmp)

    @classmethod
    def from_pretrained(cls, model: PreTrainedModel, adapter_path: str | os.PathLike) -> ProjCompModel:
        """Rebuild the projected model saved in ``adapter_path`` on top of ``model`` (the same base)."""
        config = ProjCompConfig.from_pretrained(adapter_path)
        tokenizer = None
        if config.vocab_indices is not None:
            tokenizer = AutoTokenizer.from_pretrained(adapter_path)
        pc = cls(model, config, tokenizer)
        pc.load_state_dict(load_file(os.path.join(adapter_path, WEIGHTS_NAME)))
        return pc


def check_base_matches(base_config: PretrainedConfig, config: ProjCompConfig) -> None:
    """``ValueError`` when an adapter recorded for one base is put on a base of other shapes."""
    recorded = {
        "model_type": config.model_type,
        "hidden_size": config.base_hidden_size,
        "intermediate_size": config.base_intermediate_size,
        "vocab_size": config.base_vocab_size,
        "num_hidden_layers": config.num_hidden_layers,
    }
    actual = {name: getattr(base_config, name, None) for name in recorded}
    diff = {k: (v, actual[k]) for k, v in recorded.items() if v is not None and v != actual[k]}
    if diff:
        detail = ", ".join(f"{k}: adapter {a!r} vs model {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"the adapter was built for a base model with different shapes ({detail})")
