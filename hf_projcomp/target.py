"""The smaller vanilla model: config surgery, token-id remapping, dtype, and filling its weights.

Every compressor ends here (hard pruning, COMPACT, the projected model's step-0 target and its
merge), so what the output looks like (class, config, ``generation_config``, dtype, ties) is decided
in one place.
"""

from __future__ import annotations

import copy
import logging
from collections import ChainMap
from collections.abc import Mapping
from typing import Any

import torch
from accelerate import init_empty_weights
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel

from .architectures import get_arch_spec, head_dim
from .plan import Selection

logger = logging.getLogger(__name__)

# Config fields the tokenizer's special tokens live in: a pruned vocabulary must keep these tokens,
# so losing one is an error, not a warning.
SPECIAL_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "decoder_start_token_id")
# Id-valued fields whose names don't end in ``_token_id(s)``: flat lists, lists of id sequences, and
# GenerationConfig's (position, id) pairs and {id sequence: bias} maps.
_ID_LISTS = ("suppress_tokens", "begin_suppress_tokens")
_ID_SEQUENCES = ("bad_words_ids", "force_words_ids")


def _is_id_field(name: str) -> bool:
    return (
        name.endswith(("_token_id", "_token_ids"))
        or name in _ID_LISTS + _ID_SEQUENCES
        or name in ("forced_decoder_ids", "sequence_bias")
    )


class TokenIdMap:
    """Old token id -> new id for a pruned vocabulary (``kept_token_ids[new_id] = old_id``), applied to
    every id-valued field of a config or generation config."""

    def __init__(self, kept_token_ids: torch.Tensor | list[int]) -> None:
        kept = kept_token_ids.tolist() if isinstance(kept_token_ids, torch.Tensor) else list(kept_token_ids)
        self.new_id = {old: new for new, old in enumerate(kept)}

    def remap(
        self, values: Mapping[str, Any], *, source: str, required: tuple[str, ...] = SPECIAL_TOKEN_FIELDS
    ) -> dict[str, Any]:
        """New values for the id-valued fields of ``values`` (a config's or generation config's dict).

        Fields in ``required`` must keep their tokens (``ValueError``); any other id that was pruned is
        dropped with a warning naming the field and the id (a list loses the element, a scalar
        becomes None).
        """
        out = {}
        for name, value in values.items():
            if value is None or not _is_id_field(name):
                continue
            if name in required:
                out[name] = self._required(name, value, source)
            else:
                out[name] = self._optional(name, value, source)
        return out

    def _required(self, name: str, value: Any, source: str) -> Any:
        ids = value if isinstance(value, (list, tuple)) else [value]
        missing = [i for i in ids if i not in self.new_id]
        if missing:
            raise ValueError(f"{source}.{name} {value} is not among the kept tokens; special tokens must be kept")
        new = [self.new_id[i] for i in ids]
        return new if isinstance(value, (list, tuple)) else new[0]

    def _dropped(self, name: str, what: Any, source: str) -> None:
        logger.warning("%s.%s: token id %s was pruned from the vocabulary; dropped", source, name, what)

    def _optional(self, name: str, value: Any, source: str) -> Any:
        if name == "forced_decoder_ids":
            return self._position_pairs(name, value, source)
        if name == "sequence_bias":
            return self._sequence_bias(name, value, source)
        if name in _ID_SEQUENCES:
            return self._sequences(name, value, source)
        if isinstance(value, (list, tuple)):
            for i in value:
                if i not in self.new_id:
                    self._dropped(name, i, source)
            return [self.new_id[i] for i in value if i in self.new_id] or None
        if value not in self.new_id:
            self._dropped(name, value, source)
            return None
        return self.new_id[value]

    def _position_pairs(self, name: str, value: Any, source: str) -> list[list[int]] | None:
        """``[[position, id], ...]``: a pair whose token was pruned is dropped."""
        kept = [[pos, self.new_id[i]] for pos, i in value if i in self.new_id]
        for pos, i in value:
            if i not in self.new_id:
                self._dropped(name, f"{i} (position {pos})", source)
        return kept or None

    def _sequence_bias(self, name: str, value: Any, source: str) -> Any:
        """``{(ids...): bias}`` or ``[[[ids...], bias], ...]``, returned in the same form; a sequence
        with a pruned token is dropped."""
        pairs = value.items() if isinstance(value, Mapping) else [(tuple(k), b) for k, b in value]
        kept: dict[tuple[int, ...], Any] = {}
        for ids, bias in pairs:
            if all(i in self.new_id for i in ids):
                kept[tuple(self.new_id[i] for i in ids)] = bias
            else:
                self._dropped(name, list(ids), source)
        if not isinstance(value, Mapping):
            return [[list(k), b] for k, b in kept.items()] or None
        return kept or None

    def _sequences(self, name: str, value: Any, source: str) -> list[Any] | None:
        """Banned or forced words: each is a token sequence (possibly nested), kept or dropped whole."""
        kept = []
        for seq in value:
            if all(i in self.new_id for i in _flatten(seq)):
                kept.append(_map_nested(seq, self.new_id))
            else:
                self._dropped(name, seq, source)
        return kept or None


def _flatten(value: Any) -> list[int]:
    if isinstance(value, (list, tuple)):
        return [i for v in value for i in _flatten(v)]
    return [value]


def _map_nested(value: Any, new_id: Mapping[int, int]) -> Any:
    if isinstance(value, (list, tuple)):
        return [_map_nested(v, new_id) for v in value]
    return new_id[value]


def make_target_config(
    config: PretrainedConfig,
    hidden_size: int,
    intermediate_size: int,
    kept_token_ids: torch.Tensor | None = None,
    vocab_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> PretrainedConfig:
    """A copy of ``config`` with the smaller widths; ``head_dim`` written where the config derived it.

    With ``kept_token_ids`` (new id -> old id) the vocabulary shrinks and every id-valued field is
    remapped (:class:`TokenIdMap`); a bare ``vocab_size`` is for counting parameters only.
    """
    data = config.to_dict()
    data.pop("quantization_config", None)  # a GGUF-loaded base must not make the result look quantized
    data.pop("_model_name_or_path", None)  # a GGUF's general.name, as transformers' GGUF loader keeps it
    data.update({"hidden_size": hidden_size, get_arch_spec(config).ffn_size: intermediate_size})
    if "head_dim" in data or hidden_size != config.hidden_size:  # else derived, and still right
        data["head_dim"] = head_dim(config)
    if kept_token_ids is not None:
        vocab_size = len(kept_token_ids)
        data.update(TokenIdMap(kept_token_ids).remap(data, source="config"))
    if vocab_size is not None:
        data["vocab_size"] = vocab_size
        if kept_token_ids is None:
            # Only sizes matter for counting; ids beyond the count would fail strict validation.
            data.update({f: None for f in data if _is_id_field(f)})
    if dtype is not None:
        data["dtype"] = str(dtype).removeprefix("torch.")
    return type(config).from_dict(data)


def remap_generation_config(
    generation_config: GenerationConfig, kept_token_ids: torch.Tensor | None
) -> GenerationConfig:
    """A copy of ``generation_config`` with every id-valued field remapped to the kept vocabulary."""
    out = copy.deepcopy(generation_config)
    if kept_token_ids is not None:
        values = {name: getattr(out, name, None) for name in out.to_dict()}
        for name, value in TokenIdMap(kept_token_ids).remap(values, source="generation_config", required=()).items():
            setattr(out, name, value)
    return out


def build_target_model(
    model: PreTrainedModel,
    selection: Selection,
    tensors: dict[str, torch.Tensor],
    dtype: torch.dtype | None = None,
    empty: bool = False,
) -> PreTrainedModel:
    """A vanilla model of ``type(model)`` for ``selection``; ``tensors`` overrides, the rest is copied.

    Tensors not given keep the base's values (they don't shrink); every parameter must end up with the
    target shape, which ``load_state_dict`` checks. Parameters are created on the base's device, in
    ``dtype`` (default: the base's dtype). ``empty``: the structure only, nothing copied (for a caller
    under a meta-device init, which fills it later).
    """
    dtype = dtype or model.dtype
    target_config = make_target_config(
        model.config, selection.hidden_size, selection.intermediate_size, selection.vocab, dtype=dtype
    )
    if empty:
        small = type(model)(target_config)
    else:
        small = instantiate(type(model), target_config, ChainMap(tensors, model.state_dict()), dtype, model.device)
    small.generation_config = remap_generation_config(model.generation_config, selection.vocab)
    return small


def instantiate(
    cls: type[PreTrainedModel],
    config: PretrainedConfig,
    tensors: Mapping[str, torch.Tensor],
    dtype: torch.dtype,
    device: torch.device,
) -> PreTrainedModel:
    """A new ``cls(config)`` in eval mode holding copies of ``tensors`` (by state-dict name; a tied parameter
    takes the value under its first name), floating point ones in ``dtype``, without random init.

    A new instance, never a copy of a live one: training tools patch models in place (TRL replaces
    ``forward`` with a closure over the original object, PEFT adds input hooks, checkpointing wraps
    layers), and none of that may reach a checkpoint.
    """
    config.dtype = dtype
    with init_empty_weights(include_buffers=False):
        model = cls(config)
    model.tie_weights()  # accelerate's empty init re-registers parameters, which unties them
    canonical: dict[int, str] = {}
    state: dict[str, torch.Tensor] = {}
    for name, param in model.state_dict(keep_vars=True).items():
        first = canonical.setdefault(id(param), name)
        if first != name:
            state[name] = state[first]
            continue
        state[name] = tensors[name].detach().to(dtype=dtype if param.is_floating_point() else param.dtype, copy=True)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    # Buffers the empty init created on the CPU. (PreTrainedModel.to is functools.wraps(Module.to), whose
    # stub leaves the wrapper unbound: mypy reads the device as self.)
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model


__all__ = [
    "SPECIAL_TOKEN_FIELDS",
    "TokenIdMap",
    "build_target_model",
    "instantiate",
    "make_target_config",
    "remap_generation_config",
]
