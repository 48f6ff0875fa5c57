"""What an adapter carries besides its tensors, and how a tuner is set up from it: the selection (given,
computed from the config, or a placeholder the saved weights overwrite), the pruned tokenizer, the base
it was built on, and checkpoint keys of earlier versions."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedModel

from ..architectures import ffn_size, get_arch_spec
from ..config import LEGACY_FIELDS, ProjCompConfig
from ..model_ids import hub_id_of
from ..plan import Selection
from ..ranks import on_rank0_then_broadcast


def current_key(key: str) -> str:
    """A checkpoint key as this version names it: adapters of 0.1 saved ``projections.*`` and ``target.*``
    without PEFT's ``base_model.`` prefix, those of 0.2 the norms under ``base_model.model.*`` (the
    compressed network was then the tuner's ``model``)."""
    if key.startswith("target."):
        return "base_model.compressed." + key.removeprefix("target.")
    if key.startswith("projections."):
        return "base_model." + key
    if key.startswith("base_model.model."):
        return "base_model.compressed." + key.removeprefix("base_model.model.")
    return key


def resolve_selection(model: PreTrainedModel, config: ProjCompConfig) -> Selection:
    """The selection an adapter is built with, and the pruned tokenizer attached to its config:

    * given by :func:`~hf_projcomp.get_projcomp_model` (computed there, with its arguments);
    * recorded in a legacy ``adapter_config.json`` (lists of indices);
    * coming with the adapter's weights (a config read by :meth:`ProjCompConfig.from_pretrained`): a
      placeholder of the recorded sizes, overwritten when PEFT loads the weights;
    * otherwise computed here from the config alone (``peft.get_peft_model``, TRL's ``peft_config``).
    """
    given = config.__dict__.pop("_selection", None)
    if given is not None:
        return given
    if config.hidden_indices is not None:
        selection = Selection.from_lists(config.hidden_indices, config.intermediate_indices, config.vocab_indices)
        for name in LEGACY_FIELDS:  # saved again, the adapter takes the current format
            setattr(config, name, None)
        attach_saved_tokenizer(config, selection.vocab is not None)
        return selection
    if "_adapter_source" in config.__dict__:
        if config.hidden_size is None or config.intermediate_size is None:
            raise ValueError("this adapter_config.json records no sizes: it was not written by hf_projcomp")
        layers = config.num_hidden_layers or model.config.num_hidden_layers
        vocab = None if config.vocab_size is None else torch.arange(config.vocab_size)
        attach_saved_tokenizer(config, vocab is not None)
        groups = get_arch_spec(model.config).ffn_groups(model.config)  # (experts,) in a mixture
        ffn = torch.arange(config.intermediate_size).expand(*groups, config.intermediate_size)
        return Selection(torch.arange(config.hidden_size), (ffn,) * layers, vocab)
    from ..selection import select

    recorded, selection, tokenizer = on_rank0_then_broadcast(lambda: select(model, config, None, None, progress=True))
    for field in recorded.__dataclass_fields__:
        setattr(config, field, getattr(recorded, field))
    config.__dict__["_tokenizer"] = tokenizer
    return selection


def record_base(config: ProjCompConfig) -> None:
    """PEFT records the base as the path it was loaded from; a Hub id travels with the adapter instead
    (a cache snapshot's repo, the demo's google/gemma-3-270m), the path only as the local hint, and a
    snapshot's commit as PEFT's ``revision`` (what ``AutoPeftModelForCausalLM`` loads). A model loaded
    by Hub id keeps the revision given in the config (transformers does not record the one it loaded)."""
    name = config.base_model_name_or_path
    if name and Path(name).expanduser().is_dir():
        local = Path(name).expanduser().resolve()
        hub_id = hub_id_of(local)
        config.base_model_local_path = os.fspath(local)
        config.base_model_name_or_path = hub_id or os.fspath(local)
        if config.revision is None and hub_id and local.parent.name == "snapshots":
            config.revision = local.name


def attach_saved_tokenizer(config: ProjCompConfig, prunes_vocabulary: bool) -> None:
    """A vocabulary-pruning adapter's tokenizer, read from where its config was read."""
    if not prunes_vocabulary or config.__dict__.get("_tokenizer") is not None:
        return
    source = config.__dict__.get("_adapter_source")
    if source is None:
        raise ValueError(
            "this adapter prunes the vocabulary: load it with ProjCompConfig.from_pretrained or "
            "PeftModel.from_pretrained, so its tokenizer is read with it"
        )
    path, subfolder, kwargs = source
    options = {k: kwargs[k] for k in ("revision", "token", "cache_dir") if k in kwargs}
    config.__dict__["_tokenizer"] = AutoTokenizer.from_pretrained(path, subfolder=subfolder or "", **options)


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
    if config.model_type in (None, base_config.model_type):  # d_ff from the family's own field
        actual["intermediate_size"] = ffn_size(base_config)
    diff = {k: (v, actual[k]) for k, v in recorded.items() if v is not None and v != actual[k]}
    if diff:
        detail = ", ".join(f"{k}: adapter {a!r} vs model {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"the adapter was built for a base model with different shapes ({detail})")


__all__ = ["attach_saved_tokenizer", "check_base_matches", "current_key", "record_base", "resolve_selection"]
