"""``ProjCompModel``: projected compression as a PEFT tuner (what ``LoraModel`` is to LoRA).

A frozen base model (``model``, PEFT's name: what ``PeftModel.get_base_model()`` returns) plus
trainable projections, running at the compressed width. The compressed network (``compressed``) is an
ordinary transformers model of the base class built from the smaller config. Its d_model norms (and
q/k norms) are its own trainable parameters; every other shrinking weight is supplied at call time as
``W_c = P_out · W · P_in + A`` through ``torch.func.functional_call``, so the forward pass is exactly
the vanilla model's and ``merge_and_unload`` only has to write each ``W_c`` once. Inside
``PeftModel.disable_adapter()`` the base model's own forward runs instead.

PEFT wraps it: ``peft.get_peft_model(model, ProjCompConfig(...))`` and
:func:`hf_projcomp.get_projcomp_model` both return a ``PeftModelForCausalLM`` whose ``base_model`` is
this tuner. The selected indices are buffers, saved with P, A and the norms in
``adapter_model.safetensors``.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.modules.module import _IncompatibleKeys
from transformers import PretrainedConfig, PreTrainedModel

from ..architectures import VOCAB, get_arch_spec
from ..config import ProjCompConfig
from ..export import CompressionSummary, save_compressed
from ..hard_pruning import pruned_tensors
from ..peft_integration import register, require_registered
from ..plan import Selection, build_plan
from ..target import build_target_model, instantiate
from .adapter_files import check_base_matches, current_key, record_base, resolve_selection
from .contract import AdapterState, SingleAdapterTuner
from .layer import Projection
from .patches import mirror_forward_patch
from .step import AmortizedStep, refuse_unsynchronised_ranks


def _key(param_name: str) -> str:
    # ModuleDict keys can't hold dots; the parameter's module path is unique and readable.
    return param_name.removesuffix(".weight").replace(".", "-")


def _checkpointing(model: PreTrainedModel) -> bool:
    # Later transformers 5 releases renamed is_gradient_checkpointing (deprecated) is_activation_checkpointing.
    flag = (
        "is_activation_checkpointing"
        if hasattr(type(model), "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    return bool(getattr(model, flag))


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


class ProjCompModel(SingleAdapterTuner):
    """The projected-compression tuner; users get it inside a ``PeftModel`` from
    :func:`~hf_projcomp.get_projcomp_model`, ``peft.get_peft_model`` or :meth:`from_pretrained`.

    Trainable: every P_in/P_out/A (``projections``) and the compressed model's norms. Frozen: the whole
    base model (``model``). Called like the base model (``input_ids``, ``labels``, ...). PEFT's tuner
    methods either work or say what to call instead (:class:`~hf_projcomp.projection.contract.SingleAdapterTuner`).

    Args:
        model: the base model (frozen in place).
        peft_config: a :class:`ProjCompConfig`, or PEFT's ``{adapter_name: config}``.
        adapter_name: PEFT's adapter name (one adapter per model).
    """

    prefix = "projections"  # PEFT_TYPE_TO_PREFIX_MAPPING: where the adapter's tensors live
    # Read by peft.inject_adapter_in_model before it builds the tuner; building then refuses with the
    # loaders to use instead (see __init__).
    uses_shared_state = False

    def __init__(
        self,
        model: PreTrainedModel,
        peft_config: ProjCompConfig | dict[str, ProjCompConfig],
        adapter_name: str = "default",
        **kwargs: Any,
    ) -> None:
        # BaseTuner.__init__ would inject adapter layers into the base in place; this tuner runs a separate
        # network, so only nn.Module's is run.
        nn.Module.__init__(self)
        require_registered()
        if not isinstance(peft_config, dict) and "_selection" not in peft_config.__dict__:
            # PEFT's inject_adapter_in_model (transformers' load_adapter, AutoModelForCausalLM.from_pretrained
            # on an adapter folder) passes a bare config and expects the model changed in place.
            raise ValueError(
                "a projected-compression adapter runs a smaller model and cannot be injected into the base "
                "model in place: load it with peft.AutoPeftModelForCausalLM.from_pretrained(adapter) or "
                "peft.PeftModel.from_pretrained(base, adapter) (then merge_and_unload() for the small vanilla "
                "model), or build one with hf_projcomp.get_projcomp_model"
            )
        configs = peft_config if isinstance(peft_config, dict) else {adapter_name: peft_config}
        if len(configs) != 1 or adapter_name not in configs:
            raise ValueError("projected compression holds exactly one adapter per model")
        config = configs[adapter_name]
        if not isinstance(config, ProjCompConfig):
            raise TypeError(f"peft_config must be a ProjCompConfig, got {type(config).__name__}")
        spec = get_arch_spec(model.config)
        selection = resolve_selection(model, config)
        check_base_matches(model.config, config)
        record_base(config)
        self.peft_config = configs
        self.active_adapter = adapter_name
        self.adapter_state = AdapterState(adapter_name)
        # What merge_and_unload returns: the base's own precision, not base_dtype's memory saving.
        self.output_dtype = model.dtype
        model.requires_grad_(False)
        if config.base_dtype is not None:
            model.to(getattr(torch, config.base_dtype))
        self.model = model

        device = next(model.parameters()).device
        self.register_buffer("selection_hidden", selection.hidden.to(device, copy=True))
        self.register_buffer("selection_ffn", torch.stack(selection.ffn).to(device))
        self.register_buffer(
            "selection_vocab", None if selection.vocab is None else selection.vocab.to(device, copy=True)
        )
        self.plan = build_plan(model, spec, selection.hidden_size)
        self.projections = self._build_projections(model, selection)
        self.step = AmortizedStep(
            self.projections.values(),
            [entry.name for entry in self.plan.weights],
            lambda: self.sharded_projections,
            lambda: (p for _, p in self.adapter_parameters()),
        )
        if _meta_init():  # PeftModel.from_pretrained(..., low_cpu_mem_usage=True): built once loaded
            with torch.no_grad():
                self.compressed = build_target_model(model, selection, {}, dtype=torch.float32, empty=True)
        else:
            self._set_compressed(selection)

    def _set_compressed(self, selection: Selection, loaded: dict[str, torch.Tensor] | None = None) -> None:
        """The compressed network, as the hard-pruned model at ``selection`` (its planned weights are only
        placeholders for W_c), in float32 whatever the base holds, like P and A; ``loaded``: norms to keep."""
        with torch.no_grad():
            small = build_target_model(
                self.model, selection, pruned_tensors(self.model, self.plan, selection), dtype=torch.float32
            )
            if loaded:
                small.load_state_dict(loaded, strict=False)
        small.name_or_path = getattr(self.model, "name_or_path", "")
        self.compressed = small
        self.step.adopt(dict(small.named_parameters(remove_duplicate=False)))
        small.requires_grad_(False)
        for module in small.modules():
            if _is_norm(module):
                module.requires_grad_(True)
        if self.projcomp_config.inference_mode:  # PeftModel.from_pretrained(..., is_trainable=False)
            self.set_requires_grad(self.active_adapter, requires_grad=False)
        small.train(self.model.training)

    def _build_projections(self, model: PreTrainedModel, selection: Selection) -> nn.ModuleDict:
        projections = nn.ModuleDict()
        for entry in self.plan.weights:
            rows = selection.index(entry.out_dim, entry.layer)
            gathered = entry.out_dim == VOCAB
            module_path, tensor = entry.name.rsplit(".", 1)
            projections[_key(entry.name)] = Projection(
                model.get_submodule(module_path),
                in_index=selection.index(entry.in_dim, entry.layer),
                out_index=None if gathered else rows,
                out_chunks=entry.out_chunks,
                scale=entry.scale,
                row_index=rows if gathered else None,
                tensor=tensor,
                transposed=entry.transposed,
            )
        return projections

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        """Called by PEFT after a ``low_cpu_mem_usage=True`` load, which builds the tuner on the meta device
        and assigns the loaded tensors: the compressed network is built now, from the base and the loaded
        selection, keeping the loaded norms."""
        if not any(p.is_meta for p in self.compressed.parameters()):
            return
        loaded = {n: p for n, p in self.compressed.state_dict(keep_vars=True).items() if not p.is_meta}
        self._set_compressed(self.selection(), loaded)

    @property
    def source_model(self) -> PreTrainedModel:
        """Deprecated name of :attr:`model` (the frozen base), kept for one release."""
        warnings.warn(
            "ProjCompModel.source_model is deprecated: use .model (PEFT's name for the base)",
            FutureWarning,
            stacklevel=2,
        )
        return self.model

    @property
    def target(self) -> PreTrainedModel:
        """The compressed network (``self.compressed``)."""
        return self.compressed

    @property
    def projcomp_config(self) -> ProjCompConfig:
        return self.peft_config[self.active_adapter]

    @property
    def tokenizer(self) -> Any:
        """The pruned tokenizer when the vocabulary shrinks (importance="compact"), else None."""
        return self.projcomp_config.__dict__.get("_tokenizer")

    def selection(self) -> Selection:
        """The kept indices (as saved with the adapter)."""
        return Selection(self.selection_hidden, tuple(self.selection_ffn), self.selection_vocab)

    # -- forward ---------------------------------------------------------------------------------
    @property
    def config(self) -> PretrainedConfig:
        """The compressed model's config (what transformers tooling reads)."""
        return self.compressed.config

    @property
    def sharded_projections(self) -> nn.Module | None:
        """The FSDP2 root over P, A and the base (:func:`hf_projcomp.distributed.shard`), or None.

        Kept outside the module tree, so the adapter's state dict keeps its names."""
        return self.__dict__.get("_sharded")

    def projected_weights(self) -> dict[str, torch.Tensor]:
        """Every ``W_c`` by its parameter name in the compressed model (with autograd unless disabled)."""
        if self.sharded_projections is not None:  # FSDP2 units gather their shards
            return self.sharded_projections()
        return {name: proj() for name, proj in zip(self.step.names, self.projections.values(), strict=True)}

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """The compressed model's forward (arguments as the base class's ``forward``); the base model's
        own while the adapter is disabled (:meth:`base_forward`)."""
        kwargs.update(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        if self.adapters_disabled:
            return self.base_forward(**kwargs)
        mirror_forward_patch(self.model, self.compressed)
        if self._amortized:
            self._materialize_once_per_step()
            return self.compressed(**kwargs)
        if _checkpointing(self.compressed) and self.training and torch.is_grad_enabled():
            refuse_unsynchronised_ranks()
            # Checkpointed layers recompute in backward, after functional_call would have put the placeholders
            # back. So W_c goes into the weights themselves, as in the amortised step, and every backward
            # sends its ∂L/∂W_c straight on into P and A (AmortizedStep.push_after_backward): per micro-batch, as
            # autograd
            # through the products would.
            self.materialize(push_after_backward=True)
            return self.compressed(**kwargs)
        # Tied head and embedding share one projected tensor: functional_call writes it to both.
        return functional_call(self.compressed, self.projected_weights(), (), kwargs, tie_weights=True, strict=False)

    def base_forward(self, **kwargs: Any) -> Any:
        """The base model's own forward, on this adapter's token ids.

        With a pruned vocabulary, ``input_ids`` and ``labels`` (ids of the pruned tokenizer) are mapped to
        the base's ids first, the loss is the base's own, and the logits are the base's restricted to the
        kept tokens, so that they index like the adapter's (TRL reads reference log-probabilities so)."""
        vocab = self.selection_vocab
        if vocab is None:
            return self.model(**kwargs)
        for name in ("input_ids", "labels", "shift_labels"):
            ids = kwargs.get(name)
            if ids is not None:
                kwargs[name] = torch.where(ids >= 0, vocab[ids.clamp(min=0)], ids)
        out = self.model(**kwargs)
        if getattr(out, "logits", None) is not None:
            out.logits = out.logits.index_select(-1, vocab)
        return out

    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The compressed model's ``generate``, with every ``W_c`` computed once for the whole call (the
        base's while the adapter is disabled, when the vocabulary is the base's)."""
        if self.adapters_disabled:
            if self.selection_vocab is not None:
                raise NotImplementedError(
                    "generate() with the adapter disabled: this adapter prunes the vocabulary, so the base would "
                    "generate ids its pruned tokenizer cannot decode; generate with the base model itself "
                    "(get_base_model()) and the base's tokenizer"
                )
            return self.model.generate(*args, **kwargs)
        if self._amortized:
            self._materialize_once_per_step()
            return self.compressed.generate(*args, **kwargs)
        for name, weight in self.projected_weights().items():  # the placeholders take this call's W_c
            self.step.placeholders[name].copy_(weight)
        return self.compressed.generate(*args, **kwargs)

    # -- amortised optimizer step (projection/step.py) ---------------------------------------------
    @property
    def _amortized(self) -> bool:
        return self.step.enabled

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        """Read by DDP when it wraps the ``PeftModel`` (this tuner is its ``base_model``): in the amortised
        step P and A get their gradients from the all-reduced ∂L/∂W_c (:meth:`push_gradients`), never
        from autograd, so DDP must not wait for them (``find_unused_parameters=False``)."""
        if not self._amortized:
            return []
        return [f"base_model.projections.{name}" for name, _ in self.projections.named_parameters()]

    def set_amortized(self, enabled: bool = True) -> None:
        """Switch to computing every ``W_c`` once per optimizer step (:class:`~hf_projcomp.projection.step.
        AmortizedStep`); :class:`ProjCompTrainer` drives it."""
        self.step.set_enabled(enabled)

    def materialize(self, push_after_backward: bool = False) -> None:
        """Compute every ``W_c`` once into the compressed network's weights, keeping each product's VJP
        (``push_after_backward``: the gradient-checkpointing path, see :meth:`forward`)."""
        self.step.materialize(push_after_backward)

    def _materialize_once_per_step(self) -> None:
        if not self.step.vjps:  # the step's first forward; push_gradients (or a loaded checkpoint) clears them
            self.materialize()

    def forget_materialized(self) -> None:
        """Drop ``W_c`` materialised from P and A that have changed since (a checkpoint was loaded)."""
        self.step.forget()

    def push_gradients(self) -> None:
        """Send the accumulated ∂L/∂W_c through the products into P and A (once per optimizer step)."""
        self.step.push()

    # -- parameters ------------------------------------------------------------------------------
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """What an adapter checkpoint holds: P, A, the compressed model's norms and the selected indices
        (never base weights)."""
        out: dict[str, torch.Tensor] = {name: p for name, p in self.adapter_parameters()}
        out.update((f"projections.{n}", b) for n, b in self.projections.named_buffers())
        out.update((n, b) for n, b in self.named_buffers(recurse=False) if b is not None)
        return out

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates: every P, A and norm weight."""
        return [p for _, p in self.adapter_parameters() if p.requires_grad]

    def adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(state-dict name, parameter) of every P, A and norm weight, trainable or frozen."""
        yield from (("projections." + n, p) for n, p in self.projections.named_parameters())
        for name, module in self.compressed.named_modules():
            if _is_norm(module):
                yield from ((f"compressed.{name}.{n}", p) for n, p in module.named_parameters())

    # -- merge -----------------------------------------------------------------------------------
    @torch.no_grad()
    def merge_and_unload(
        self,
        dtype: torch.dtype | None = None,
        *,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ) -> PreTrainedModel:
        """Compute every ``W_c`` once and return a vanilla model of the base class with the smaller config,
        in ``dtype`` (default: the dtype the base model had when it was wrapped). PEFT's ``progressbar``
        and ``safe_merge`` change nothing here (one short pass, no in-place merge to check);
        ``adapter_names`` can only name this model's adapter."""
        if adapter_names is not None:
            self._check_own(list(adapter_names), "merge_and_unload")
        small = self.compressed
        state = {**small.state_dict(), **self.projected_weights()}
        device = next(small.parameters()).device
        merged = instantiate(type(small), copy.deepcopy(small.config), state, dtype or self.output_dtype, device)
        merged.generation_config = copy.deepcopy(small.generation_config)
        merged.name_or_path = small.name_or_path
        return merged.requires_grad_(True)

    def card_settings(self) -> dict[str, Any]:
        """The configuration a model card reports (targets and importance, not the indices)."""
        names = ("importance", "target_params", "hidden_size", "intermediate_size", "vocab_size", "base_dtype")
        return {n: getattr(self.projcomp_config, n) for n in names if getattr(self.projcomp_config, n) is not None}

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
        tokenizer = self.tokenizer if self.tokenizer is not None else tokenizer
        if tokenizer is None:
            raise ValueError("save_merged needs the base model's tokenizer: pass tokenizer=...")
        merged = self.merge_and_unload()
        return save_compressed(merged, tokenizer, out_dir, summary or self.compression_summary(merged), **kwargs)

    def compression_summary(self, merged: PreTrainedModel, **kwargs: Any) -> CompressionSummary:
        """What the model card of ``merged`` reports: base, sizes, settings and the training data and
        tokens the adapter recorded; ``kwargs`` add to or override those fields."""
        config = self.projcomp_config
        fields = {
            "base_model": config.base_model_name_or_path,
            "settings": self.card_settings(),
            "training_data": config.training_data,
            "training_tokens": config.training_tokens,
            **kwargs,
        }
        return CompressionSummary.from_configs(
            "projected-compression",
            self.model.config,
            merged.config,
            self.model.num_parameters(),
            merged.num_parameters(),
            **fields,
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
        self.step.forget()  # W_c materialised from the old values are stale
        return _IncompatibleKeys(missing, unexpected)

    @classmethod
    def from_pretrained(
        cls, model: PreTrainedModel, adapter: str | os.PathLike, is_trainable: bool = True, **kwargs: Any
    ) -> Any:
        """``PeftModel.from_pretrained(model, adapter, is_trainable=...)``: the adapter (a directory or a Hub
        id) rebuilt on ``model``, the same base it was built on; trainable unless ``is_trainable=False``."""
        from peft import PeftModel

        return PeftModel.from_pretrained(model, adapter, is_trainable=is_trainable, **kwargs)

    # -- PEFT's hooks: which state-dict entries are the adapter's, and how checkpoint keys map back --
    @classmethod
    def _get_adapter_state_dict(
        cls,
        model: nn.Module,
        config: ProjCompConfig,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
        unwanted_adapter_names: list[str],
    ) -> dict:
        # This tuner's state_dict() is its adapter already (base weights never enter it).
        return {k: v for k, v in state_dict.items() if k.startswith("base_model.")}

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        return key  # one adapter per model: keys carry no adapter name

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: ProjCompConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {current_key(k): v for k, v in state_dict.items()}


def unwrap(model: nn.Module) -> ProjCompModel:
    """The :class:`ProjCompModel` inside a ``PeftModel`` (and DDP / accelerate wrappers), or ``TypeError``."""
    from peft import PeftModel

    inner = model
    while not isinstance(inner, ProjCompModel):
        if isinstance(inner, PeftModel):
            inner = inner.base_model
        elif isinstance(getattr(inner, "module", None), nn.Module):
            inner = inner.module
        else:
            raise TypeError(
                "model must be a projected-compression model (hf_projcomp.get_projcomp_model, or "
                f"peft.get_peft_model with a ProjCompConfig), got {type(model).__name__}"
            )
    return inner


def _meta_init() -> bool:
    """Whether parameters are being created on the meta device (accelerate's ``init_empty_weights``)."""
    probe = nn.Module()
    probe.register_parameter("p", nn.Parameter(torch.empty(0)))
    return probe.p.is_meta


register(ProjCompConfig, ProjCompModel)
