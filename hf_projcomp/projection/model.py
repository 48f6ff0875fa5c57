"""``ProjCompModel``: projected compression as a PEFT tuner (what ``LoraModel`` is to LoRA).

A frozen base model (``model``, PEFT's name: what ``PeftModel.get_base_model()`` returns) plus
trainable projections, running at the compressed width. The compressed network (``compressed``) is an
ordinary transformers model of the base class built from the smaller config. Its d_model norms (and
q/k norms) are its own trainable parameters; every other shrinking weight is supplied at call time as
``W_c = P_out · W · P_in + A`` through ``torch.func.functional_call``, so the forward pass is exactly
the vanilla model's and ``merge_and_unload`` only has to write each ``W_c`` once. Inside
``PeftModel.disable_adapter()`` the base model's own forward runs instead.

The selection (the kept indices) is the tuner's state: buffers saved with P, A and the norms in
``adapter_model.safetensors``. A tuner starts from its config (:func:`~.adapter_files.initial_selection`)
and takes another selection with :meth:`ProjCompModel.set_selection` or by loading an adapter's weights.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import torch
from peft import PeftConfig
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from ..architectures import get_arch_spec
from ..config import ProjCompConfig
from ..export.card import CompressionSummary
from ..export.projected import card_settings, merge_projected, projected_summary, save_projected
from ..peft_integration import register, require_registered
from ..plan import Selection, build_plan
from ..target import remap_generation_config
from .adapter_files import check_base_matches, check_selection_fits, initial_selection, record_base
from .build import build_compressed, build_projections, meta_init, train_only_norms
from .checkpoint import AdapterTensors
from .contract import AdapterState, SingleAdapterTuner
from .layer import Projection
from .run import RunsCompressed
from .step import AmortizedStep

_NOT_IN_PLACE = (
    "a projected-compression adapter runs a smaller model and cannot be injected into the base model in place: "
    "load it with peft.AutoPeftModelForCausalLM.from_pretrained(adapter) or peft.PeftModel.from_pretrained(base, "
    "adapter) (then merge_and_unload() for the small vanilla model), or build one with hf_projcomp.get_projcomp_model"
)


class ProjCompModel(RunsCompressed, AdapterTensors, SingleAdapterTuner):
    """The projected-compression tuner; users get it inside a ``PeftModel`` from
    :func:`~hf_projcomp.get_projcomp_model`, ``peft.get_peft_model`` or :meth:`from_pretrained`.

    Trainable: every P_in/P_out/A (``projections``) and the compressed model's norms. Frozen: the whole
    base model (``model``). Called like the base model (``input_ids``, ``labels``, ...). PEFT's tuner
    methods either work or say what to call instead (:class:`~.contract.SingleAdapterTuner`).

    Args:
        model: the base model (frozen in place).
        peft_config: PEFT's ``{adapter_name: ProjCompConfig}`` (one adapter per model).
        adapter_name: PEFT's adapter name.
    """

    prefix = "projections"  # PEFT_TYPE_TO_PREFIX_MAPPING: where the adapter's tensors live
    # Read by peft.inject_adapter_in_model before it builds the tuner, which then refuses (see __init__).
    uses_shared_state = False

    def __init__(
        self, model: PreTrainedModel, peft_config: dict[str, ProjCompConfig], adapter_name: str = "default", **_: Any
    ) -> None:
        # BaseTuner.__init__ would inject adapter layers into the base in place; this tuner runs a separate
        # network, so only nn.Module's is run.
        nn.Module.__init__(self)
        require_registered()
        if not isinstance(peft_config, dict):  # PEFT's inject_adapter_in_model passes a bare config
            raise ValueError(_NOT_IN_PLACE)
        if list(peft_config) != [adapter_name]:
            raise ValueError("projected compression holds exactly one adapter per model")
        config = peft_config[adapter_name]
        if not isinstance(config, ProjCompConfig):
            raise TypeError(f"peft_config must be a ProjCompConfig, got {type(config).__name__}")
        get_arch_spec(model.config)  # an unsupported model fails before any work
        selection, tokenizer = initial_selection(model, config)
        check_base_matches(model.config, config)
        record_base(config)
        self.peft_config: dict[str, PeftConfig] = {adapter_name: config}
        self.active_adapter = adapter_name
        self.adapter_state = AdapterState(adapter_name)
        # What merge_and_unload returns: the base's own precision, not base_dtype's memory saving.
        self.output_dtype = model.dtype
        model.requires_grad_(False)
        if config.base_dtype is not None:
            model.to(getattr(torch, config.base_dtype))
        self.model = model
        self._build(selection, tokenizer)
        # PEFT loads an adapter through the PeftModel's load_state_dict, which runs this after the tensors.
        self.register_load_state_dict_post_hook(lambda module, _: module.adapter_loaded())

    def set_selection(self, selection: Selection, tokenizer: Any = None) -> None:
        """Start from ``selection`` (sizes as the config records; with a pruned vocabulary, ``tokenizer`` is
        the matching pruned tokenizer): P and A one-hot at it, A = 0, the norms the base's kept ones."""
        check_selection_fits(self.projcomp_config, selection)
        del self.compressed, self.projections  # freed before the new ones are built: one copy at a time
        self._build(selection, tokenizer)

    def _build(self, selection: Selection, tokenizer: Any) -> None:
        model = self.model
        device = next(model.parameters()).device
        self.tokenizer = tokenizer  # the pruned tokenizer when the vocabulary shrinks, else None
        self.register_buffer("selection_hidden", selection.hidden.to(device, copy=True))
        self.register_buffer("selection_ffn", torch.stack(selection.ffn).to(device))
        vocab = None if selection.vocab is None else selection.vocab.to(device, copy=True)
        self.register_buffer("selection_vocab", vocab)
        self.plan = build_plan(model, get_arch_spec(model.config), selection.hidden_size)
        self.projections = build_projections(model, self.plan, selection, self.projcomp_config.projection_rank)
        self.step = AmortizedStep(
            cast("Iterable[Projection]", self.projections.values()),
            [entry.name for entry in self.plan.weights],
            lambda: self.sharded_projections,
            lambda: (p for _, p in self.adapter_parameters()),
        )
        self._set_compressed(selection)

    def _set_compressed(self, selection: Selection, loaded: dict[str, torch.Tensor] | None = None) -> None:
        self.compressed = small = build_compressed(self.model, self.plan, selection, loaded)
        if meta_init():  # PeftModel.from_pretrained(..., low_cpu_mem_usage=True): built once loaded
            return
        self.step.adopt(dict(small.named_parameters(remove_duplicate=False)))
        train_only_norms(small)
        if self.projcomp_config.inference_mode:  # PeftModel.from_pretrained(..., is_trainable=False)
            self.set_requires_grad(self.active_adapter, requires_grad=False)
        small.train(self.model.training)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        """Called by PEFT after a ``low_cpu_mem_usage=True`` load, which builds the tuner on the meta device
        and assigns the loaded tensors: the compressed network is built now, from the base and the loaded
        selection, keeping the loaded norms."""
        if not any(p.is_meta for p in self.compressed.parameters()):
            return
        loaded = {n: p for n, p in self.compressed.state_dict(keep_vars=True).items() if not p.is_meta}
        self._set_compressed(self.selection(), loaded)

    def adapter_loaded(self) -> None:
        """After an adapter's tensors are loaded: ``W_c`` materialised from the old P and A are stale, and
        the compressed network's generation config follows the loaded vocabulary."""
        self.step.forget()
        vocab = self.selection_vocab
        if vocab is not None and not vocab.is_meta:
            self.compressed.generation_config = remap_generation_config(self.model.generation_config, vocab)

    # -- what PEFT, Trainer and users read -------------------------------------------------------------
    @property
    def source_model(self) -> PreTrainedModel:
        """Deprecated name of :attr:`model` (the frozen base), kept for one release."""
        msg = "ProjCompModel.source_model is deprecated: use .model (PEFT's name for the base)"
        warnings.warn(msg, FutureWarning, stacklevel=2)
        return self.model

    @property
    def target(self) -> PreTrainedModel:
        """The compressed network (``self.compressed``)."""
        return self.compressed

    @property
    def projcomp_config(self) -> ProjCompConfig:
        return cast(ProjCompConfig, self.peft_config[self.active_adapter])  # __init__ takes no other

    @property
    def config(self) -> PretrainedConfig:
        """The compressed model's config (what transformers tooling reads)."""
        return self.compressed.config

    def selection(self) -> Selection:
        """The kept indices (as saved with the adapter)."""
        return Selection(self.selection_hidden, tuple(self.selection_ffn), self.selection_vocab)

    # -- out as a vanilla model (hf_projcomp/export/projected.py) -------------------------------------
    def merge_and_unload(
        self,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
        *,
        dtype: torch.dtype | None = None,
    ) -> PreTrainedModel:
        """Compute every ``W_c`` once and return a vanilla model of the base class with the smaller config,
        in ``dtype`` (default: the dtype the base model had when it was wrapped). PEFT's ``progressbar``
        and ``safe_merge`` change nothing here (one short pass, no in-place merge to check);
        ``adapter_names`` can only name this model's adapter."""
        if adapter_names is not None:
            self._check_own(list(adapter_names), "merge_and_unload")
        return merge_projected(self, dtype)

    def card_settings(self) -> dict[str, Any]:
        """The configuration a model card reports (targets and importance, not the indices)."""
        return card_settings(self.projcomp_config)

    def save_merged(
        self,
        out_dir: str | os.PathLike,
        tokenizer: Any = None,
        summary: CompressionSummary | None = None,
        **kwargs: Any,
    ) -> Path:
        """:meth:`merge_and_unload`, then :func:`~hf_projcomp.export.save_compressed`: config, safetensors,
        tokenizer (the pruned one when the vocabulary shrank) and model card, written atomically and
        verified by reloading. ``kwargs`` go to ``save_compressed`` (``overwrite``, ``repo_id``...)."""
        return save_projected(self, out_dir, tokenizer, summary, **kwargs)

    def compression_summary(self, merged: PreTrainedModel, **kwargs: Any) -> CompressionSummary:
        """What the model card of ``merged`` reports: base, sizes, settings and the training data and
        tokens the adapter recorded; ``kwargs`` add to or override those fields."""
        return projected_summary(self, merged, **kwargs)

    @classmethod
    def from_pretrained(
        cls, model: PreTrainedModel, adapter: str | os.PathLike, is_trainable: bool = True, **kwargs: Any
    ) -> Any:
        """``PeftModel.from_pretrained(model, adapter, is_trainable=...)``: the adapter (a directory or a Hub
        id) rebuilt on ``model``, the same base it was built on; trainable unless ``is_trainable=False``."""
        from peft import PeftModel

        return PeftModel.from_pretrained(model, adapter, is_trainable=is_trainable, **kwargs)


def unwrap(model: nn.Module) -> ProjCompModel:
    """The :class:`ProjCompModel` inside a ``PeftModel`` (and DDP / accelerate wrappers), or ``TypeError``."""
    from peft import PeftModel

    inner = model
    while not isinstance(inner, ProjCompModel):
        if isinstance(inner, PeftModel):
            inner = inner.base_model
        elif isinstance(wrapped := getattr(inner, "module", None), nn.Module):  # DDP, accelerate
            inner = wrapped
        else:
            raise TypeError(
                "model must be a projected-compression model (hf_projcomp.get_projcomp_model, or "
                f"peft.get_peft_model with a ProjCompConfig), got {type(model).__name__}"
            )
    return inner


register(ProjCompConfig, ProjCompModel)
