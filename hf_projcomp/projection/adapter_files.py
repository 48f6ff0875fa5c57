"""What an adapter carries besides its tensors, and how a tuner starts from its config: the selection it
is built with (computed from the config's importance, or a placeholder of the recorded sizes that the
saved weights or :meth:`~hf_projcomp.ProjCompModel.set_selection` replace), the pruned tokenizer saved
beside it, the base it was built on, and checkpoint keys and configs of earlier versions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedModel

from ..architectures import ffn_size, get_arch_spec
from ..config import LEGACY_FIELDS, ProjCompConfig
from ..model_ids import hub_id_of
from ..plan import Selection
from ..ranks import on_rank0_then_broadcast

# Hub arguments of PeftModel.from_pretrained / load_adapter that say where the adapter's files are.
_HUB_ARGUMENTS = ("revision", "token", "cache_dir")


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


def initial_selection(model: PreTrainedModel, config: ProjCompConfig) -> tuple[Selection, Any]:
    """(the selection a tuner is built with, the pruned tokenizer or None):

    * a config that records what was built (an adapter's, or :func:`~hf_projcomp.get_projcomp_model`'s):
      a placeholder of the recorded sizes, replaced by the loaded weights or by ``set_selection``;
    * a 0.1 adapter's config, which lists the indices themselves: those (:func:`legacy_selection`);
    * otherwise (``peft.get_peft_model``, TRL's ``peft_config``): computed from the config's importance,
      on rank 0 and broadcast, with what was built recorded in ``config``.
    """
    if config.hidden_indices is not None:
        return legacy_selection(config), None
    if config.base_hidden_size is not None:
        return placeholder_selection(model.config, config), None
    from ..selection import select

    recorded, selection, tokenizer = on_rank0_then_broadcast(lambda: select(model, config, None, None, progress=True))
    for field in recorded.__dataclass_fields__:
        setattr(config, field, getattr(recorded, field))
    return selection, tokenizer


def placeholder_selection(base_config: PretrainedConfig, config: ProjCompConfig) -> Selection:
    """The first indices of every recorded size: the shapes an adapter's weights load into."""
    if config.hidden_size is None or config.intermediate_size is None:
        raise ValueError("this adapter_config.json records no sizes: it was not written by hf_projcomp")
    layers = config.num_hidden_layers or base_config.num_hidden_layers
    vocab = None if config.vocab_size is None else torch.arange(config.vocab_size)
    groups = get_arch_spec(base_config).ffn_groups(base_config)  # (experts,) in a mixture
    ffn = torch.arange(config.intermediate_size).expand(*groups, config.intermediate_size)
    return Selection(torch.arange(config.hidden_size), (ffn,) * layers, vocab)


def legacy_selection(config: ProjCompConfig) -> Selection:
    """The indices a 0.1 ``adapter_config.json`` lists; the config drops them (saved again, the adapter
    takes the current format, indices in the weights file)."""
    hidden, ffn = config.hidden_indices, config.intermediate_indices
    if hidden is None or ffn is None:
        raise ValueError("a legacy adapter_config.json lists hidden_indices and intermediate_indices together")
    selection = Selection.from_lists(hidden, ffn, config.vocab_indices)
    for name in LEGACY_FIELDS:
        setattr(config, name, None)
    return selection


def load_saved_tokenizer(model_id: str | os.PathLike, subfolder: str | None = None, **hub: Any) -> Any:
    """The pruned tokenizer saved beside a vocabulary-pruning adapter (a directory or a Hub id)."""
    options = {k: hub[k] for k in _HUB_ARGUMENTS if hub.get(k) is not None}
    return AutoTokenizer.from_pretrained(os.fspath(model_id), subfolder=subfolder or "", **options)


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


def check_selection_fits(config: ProjCompConfig, selection: Selection) -> None:
    """``ValueError`` when ``selection`` has other sizes than the adapter's config records."""
    sizes = {
        "hidden_size": selection.hidden_size,
        "intermediate_size": selection.intermediate_size,
        "vocab_size": None if selection.vocab is None else len(selection.vocab),
    }
    diff = {k: (getattr(config, k), v) for k, v in sizes.items() if getattr(config, k) != v}
    if diff:
        detail = ", ".join(f"{k}: config {a!r} vs selection {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"selection does not fit this adapter's config ({detail})")


__all__ = [
    "check_base_matches",
    "check_selection_fits",
    "current_key",
    "initial_selection",
    "legacy_selection",
    "load_saved_tokenizer",
    "placeholder_selection",
    "record_base",
]
