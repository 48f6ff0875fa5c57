"""GGUF export for llama.cpp (Ollama, LM Studio, llama-cpp-python), written with the ``gguf`` package.

:func:`save_gguf` writes a model of any supported family and its (pruned) tokenizer as one GGUF
file, doing what llama.cpp's ``convert_hf_to_gguf.py`` does for the family (the facts are the
family's :class:`~hf_projcomp.architectures.GGUFSpec`): tensor names from ``gguf``'s own name map,
q/k rows interleaved for llama's rotary, Gemma's ``(1 + w)`` norms stored as ``1 + w``, GPT-2's ``Conv1D``
weights transposed, fused q/k/v, gate/up and experts' gate/up regrouped or split, widths and
head sizes written explicitly (after compression ``hidden_size / num_heads`` is no longer
``head_dim``), the vocabulary from the tokenizer itself (:mod:`.gguf_vocab`). The file is written to
a temporary name beside the target, read back with ``gguf.GGUFReader`` and compared tensor by
tensor and key by key with what was meant to be written, then renamed into place.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from ..architectures import GGUFSpec, ffn_size, get_arch_spec, head_dim
from ..io import atomic_file
from .gguf_vocab import GGUFVocab, gguf_vocab

# outtype -> (GGML type of 2-D weights, llama.cpp file type). 1-D tensors (norms, biases) stay F32,
# and a Q8_0 weight whose rows don't split into 32-value blocks falls back to F16, as the converter does.
OUTTYPES = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
}


_PLAIN = ("F32", "F16")  # stored as the numpy array itself; the others go through gguf.quants
# 2-D and 3-D tensors the converter keeps in F32 whatever the outtype (norms, the MoE router, positions).
_F32_NAMES = ("_norm.weight", "ffn_gate_inp.weight", "position_embd.weight")


class GGUFExportError(ValueError):
    """The model or tokenizer cannot be written as a GGUF llama.cpp runs the same way."""


def save_gguf(
    model: PreTrainedModel,
    tokenizer: Any,
    path: str | os.PathLike,
    outtype: str = "f32",
    *,
    pre_tokenizer: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` and ``tokenizer`` to the GGUF file ``path`` (module docstring) and return it.

    Args:
        outtype: ``"f32"``, ``"f16"``, ``"bf16"`` or ``"q8_0"`` for the 2-D weights.
        pre_tokenizer: llama.cpp's name of a byte-level pre-tokenizer the built-in table does not know.
        overwrite: replace an existing file.
    """
    import gguf

    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {sorted(OUTTYPES)}, got {outtype!r}")
    spec = _gguf_spec(model)
    vocab = gguf_vocab(tokenizer, model.config.vocab_size, pre_tokenizer)
    metadata = gguf_metadata(model, vocab, outtype)
    tensors = gguf_tensors(model, outtype)
    with atomic_file(path, overwrite=overwrite) as tmp:
        writer = gguf.GGUFWriter(tmp, spec.arch_name)
        for key, (value, vtype, sub_type) in metadata.items():
            if key != gguf.Keys.General.ARCHITECTURE:  # the writer adds it
                writer.add_key_value(key, value, vtype, sub_type)
        for name, (data, qtype) in tensors.items():
            if qtype.name in _PLAIN:
                writer.add_tensor(name, data)
            else:
                writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        verify_gguf(tmp, metadata, tensors)
    return Path(path)


class _ResolvedSpec:
    def __init__(self, spec: GGUFSpec) -> None:
        import gguf

        self.spec = spec
        self.arch = gguf.MODEL_ARCH[spec.arch]
        self.arch_name = gguf.MODEL_ARCH_NAMES[self.arch]


def _gguf_spec(model: PreTrainedModel) -> _ResolvedSpec:
    arch = get_arch_spec(model.config)
    if arch.gguf is None:
        raise GGUFExportError(f"no GGUF layout is known for model_type {arch.model_type!r}")
    config, spec = model.config, arch.gguf
    q_width = config.num_attention_heads * head_dim(config)
    if spec.square_attention and q_width != config.hidden_size:
        if spec.fallback is None:
            raise GGUFExportError(
                f"model_type {arch.model_type!r}: llama.cpp's {spec.arch.lower()} graph sizes attn_q and attn_output "
                f"as n_embd × n_embd, but hidden_size={config.hidden_size} is not {config.num_attention_heads} heads "
                f"× head_dim {head_dim(config)} = {q_width}; "
                f"{spec.no_fallback or 'no other llama.cpp layout is known'}"
            )
        spec = spec.fallback
    _check_assumptions(config, spec, arch.model_type)
    return _ResolvedSpec(spec)


def _check_assumptions(config: Any, spec: GGUFSpec, model_type: str) -> None:
    """``GGUFExportError`` for a config fact ``spec``'s llama.cpp graph hard-codes otherwise."""
    for field_name, equals, why in spec.requires:
        value = getattr(config, field_name, None)
        expected = head_dim(config) if equals == "head_dim" else getattr(config, equals, None)
        if value is not None and value != expected:
            raise GGUFExportError(
                f"model_type {model_type!r}: {field_name}={value} differs from {equals}={expected}: {why}"
            )
    for field_name, expected, why in spec.assumes:
        value = getattr(config, field_name, expected)
        if value != expected:
            raise GGUFExportError(
                f"model_type {model_type!r}: {field_name}={value!r}, but {why} (it assumes {field_name}={expected!r})"
            )
    if spec.no_rope_every is not None:
        layers = getattr(config, "no_rope_layers", None)
        fixed = [int((i + 1) % spec.no_rope_every != 0) for i in range(config.num_hidden_layers)]
        if layers is not None and list(layers) != fixed:
            raise GGUFExportError(
                f"no_rope_layers={list(layers)}: llama.cpp's {spec.arch.lower()} skips RoPE in "
                f"every {spec.no_rope_every}th layer only ({fixed})"
            )


def gguf_metadata(model: PreTrainedModel, vocab: GGUFVocab, outtype: str) -> dict[str, tuple[Any, Any, Any]]:
    """Every GGUF key -> (value, GGUFValueType, element type of an array) this model's file holds."""
    resolved = _gguf_spec(model)
    keys = _Metadata(resolved.arch_name)
    _general_keys(keys, model, outtype)
    _shape_keys(keys, model.config, resolved.spec)
    if resolved.spec.rotary:
        _rope_keys(keys, model.config)
    _family_keys(keys, model.config, resolved.spec)
    _tokenizer_keys(keys, vocab)
    return keys.items


class _Metadata:
    """GGUF keys in the order they are written; ``{arch}`` in a key stands for the architecture's name."""

    def __init__(self, arch: str) -> None:
        self.arch = arch
        self.items: dict[str, tuple[Any, Any, Any]] = {}

    def put(self, key: str, value: Any, vtype: Any, sub_type: Any = None) -> None:
        self.items[key.format(arch=self.arch)] = (value, vtype, sub_type)


def _general_keys(keys: _Metadata, model: PreTrainedModel, outtype: str) -> None:
    import gguf

    V, K = gguf.GGUFValueType, gguf.Keys
    keys.put(K.General.ARCHITECTURE, keys.arch, V.STRING)
    # llama.cpp keys some per-token attributes on this name (a "phi3" name expects Phi-3's specials).
    keys.put(K.General.NAME, Path(getattr(model, "name_or_path", "") or model.config.model_type).name, V.STRING)
    keys.put(K.General.FILE_TYPE, int(gguf.LlamaFileType[OUTTYPES[outtype][1]]), V.UINT32)


def _shape_keys(keys: _Metadata, config: Any, spec: GGUFSpec) -> None:
    """Widths, depth, heads and the norm epsilon, written explicitly (compression changes them)."""
    import gguf

    V, K = gguf.GGUFValueType, gguf.Keys
    u32 = V.UINT32
    keys.put(K.LLM.CONTEXT_LENGTH, config.max_position_embeddings, u32)
    keys.put(K.LLM.EMBEDDING_LENGTH, config.hidden_size, u32)
    keys.put(K.LLM.BLOCK_COUNT, config.num_hidden_layers, u32)
    keys.put(K.LLM.FEED_FORWARD_LENGTH, ffn_size(config), u32)  # per expert in a mixture
    keys.put(K.LLM.VOCAB_SIZE, config.vocab_size, u32)
    keys.put(K.Attention.HEAD_COUNT, config.num_attention_heads, u32)
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    keys.put(K.Attention.HEAD_COUNT_KV, kv_heads, u32)
    keys.put(K.Attention.KEY_LENGTH, head_dim(config), u32)
    keys.put(K.Attention.VALUE_LENGTH, head_dim(config), u32)
    eps_key, eps_field = spec.norm_eps
    keys.put(f"{{arch}}.{eps_key}", float(getattr(config, eps_field)), V.FLOAT32)


def _rope_keys(keys: _Metadata, config: Any) -> None:
    """The full-attention layers' RoPE: rotary width, base and scaling (linear or YaRN)."""
    import gguf

    V, K = gguf.GGUFValueType, gguf.Keys
    u32, f32 = V.UINT32, V.FLOAT32
    rope = _rope(config, "full_attention")
    keys.put(K.Rope.DIMENSION_COUNT, int(head_dim(config) * rope.get("partial_rotary_factor", 1.0)), u32)
    keys.put(K.Rope.FREQ_BASE, float(rope.get("rope_theta", 10000.0)), f32)
    rope_type = rope.get("rope_type", "default")
    if rope_type == "linear":
        keys.put(K.Rope.SCALING_TYPE, "linear", V.STRING)
        keys.put(K.Rope.SCALING_FACTOR, float(rope["factor"]), f32)
    elif rope_type == "yarn":
        keys.put(K.Rope.SCALING_TYPE, "yarn", V.STRING)
        keys.put(K.Rope.SCALING_FACTOR, float(rope["factor"]), f32)
        keys.put(K.Rope.SCALING_ORIG_CTX_LEN, int(rope["original_max_position_embeddings"]), u32)
    elif rope_type not in ("default", "llama3"):  # llama3's factors are the rope_freqs tensor
        raise GGUFExportError(f"rope_type {rope_type!r} is not written to GGUF by hf_projcomp")


def _family_keys(keys: _Metadata, config: Any, spec: GGUFSpec) -> None:
    """The family's own constants, counts and flags, logit soft-capping, and the sliding-window layout."""
    import gguf

    V, K = gguf.GGUFValueType, gguf.Keys
    f32 = V.FLOAT32
    for fields, vtype, cast in (
        (spec.constants, f32, float),
        (spec.integers, V.UINT32, int),
        (spec.flags, V.BOOL, bool),
    ):
        for key, field_name in fields:
            if getattr(config, field_name, None) is not None:
                keys.put(f"{{arch}}.{key}", cast(getattr(config, field_name)), vtype)
    if getattr(config, "final_logit_softcapping", None):
        keys.put(K.LLM.FINAL_LOGIT_SOFTCAPPING, float(config.final_logit_softcapping), f32)
    layer_types = getattr(config, "layer_types", None)
    if spec.sliding_window and getattr(config, "sliding_window", None) and layer_types:
        keys.put(K.Attention.SLIDING_WINDOW, int(config.sliding_window), V.UINT32)
        pattern = [t == "sliding_attention" for t in layer_types]
        keys.put(K.Attention.SLIDING_WINDOW_PATTERN, pattern, V.ARRAY, V.BOOL)
        local = _rope(config, "sliding_attention")
        if "rope_theta" in local:
            keys.put(K.Rope.FREQ_BASE_SWA, float(local["rope_theta"]), f32)


def _tokenizer_keys(keys: _Metadata, vocab: GGUFVocab) -> None:
    import gguf

    V, K = gguf.GGUFValueType, gguf.Keys
    keys.put(K.Tokenizer.MODEL, vocab.model, V.STRING)
    keys.put(K.Tokenizer.PRE, vocab.pre, V.STRING)
    keys.put(K.Tokenizer.LIST, vocab.tokens, V.ARRAY, V.STRING)
    keys.put(K.Tokenizer.TOKEN_TYPE, vocab.types, V.ARRAY, V.INT32)
    if vocab.scores is not None:
        keys.put(K.Tokenizer.SCORES, vocab.scores, V.ARRAY, V.FLOAT32)
    if vocab.merges is not None:
        keys.put(K.Tokenizer.MERGES, vocab.merges, V.ARRAY, V.STRING)
    if vocab.add_space_prefix is not None:
        keys.put(K.Tokenizer.ADD_PREFIX, vocab.add_space_prefix, V.BOOL)
    for name, token_id in vocab.special_ids.items():
        keys.put(getattr(K.Tokenizer, f"{name.upper()}_ID"), token_id, V.UINT32)
    keys.put(K.Tokenizer.ADD_BOS, vocab.add_bos, V.BOOL)
    keys.put(K.Tokenizer.ADD_EOS, vocab.add_eos, V.BOOL)
    if vocab.chat_template is not None:
        keys.put(K.Tokenizer.CHAT_TEMPLATE, vocab.chat_template, V.STRING)


def _rope(config: Any, layer_type: str) -> dict[str, Any]:
    """One attention type's RoPE parameters (transformers 5 keys them by layer type where they differ)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    return dict(params.get(layer_type, params if layer_type == "full_attention" else {}))


def gguf_tensors(model: PreTrainedModel, outtype: str = "f32") -> dict[str, tuple[np.ndarray, Any]]:
    """GGUF tensor name -> (float32 array as llama.cpp wants it, GGML type it is stored in)."""
    import gguf

    resolved = _gguf_spec(model)
    spec, config = get_arch_spec(model.config), model.config
    names = gguf.get_tensor_name_map(resolved.arch, config.num_hidden_layers)
    permute = {path: getattr(config, heads) for path, heads in resolved.spec.rope_permute}
    norms = {f"{name}.weight" for name, module in model.named_modules() if "norm" in type(module).__name__.lower()}
    weight_type = gguf.GGMLQuantizationType[OUTTYPES[outtype][0]]
    out: dict[str, tuple[np.ndarray, Any]] = {}
    for name, data in _converter_tensors(model, resolved.spec):
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GGUFExportError(f"no GGUF tensor name for {name} in llama.cpp's {resolved.arch_name} layout")
        if not gguf_name.endswith((".weight", ".bias")):  # a parameter that is itself a weight (fused experts)
            gguf_name += ".weight"
        if name in norms and spec.norm_offset:
            data = data + spec.norm_offset
        module_path = name.rsplit(".", 1)[0]
        for path, heads in permute.items():
            if module_path.endswith(path):
                data = _interleave_rope(data, heads)
        out[gguf_name] = _stored(gguf_name, data.numpy(), weight_type)
    output, embedding = (
        gguf.TENSOR_NAMES[t] + ".weight" for t in (gguf.MODEL_TENSOR.OUTPUT, gguf.MODEL_TENSOR.TOKEN_EMBD)
    )
    if resolved.spec.output_required and output not in out:  # a tied head the graph does not share
        out[output] = out[embedding]
    freqs = _llama3_rope_factors(config)
    if freqs is not None:
        out[gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"] = (freqs, gguf.GGMLQuantizationType.F32)
    return out


def _stored(name: str, array: np.ndarray, weight_type: Any) -> tuple[np.ndarray, Any]:
    """(array, GGML type) as the converter stores a tensor: weights in ``weight_type``, the rest in F32."""
    import gguf

    types = gguf.GGMLQuantizationType
    qtype = weight_type if array.ndim >= 2 and not name.endswith(_F32_NAMES) else types.F32
    if qtype == types.Q8_0 and array.shape[-1] % 32:
        qtype = types.F16
    if qtype == types.F16:
        array = array.astype(np.float16)
    return array, qtype


def _converter_tensors(model: PreTrainedModel, spec: GGUFSpec) -> list[tuple[str, torch.Tensor]]:
    """(name, float32 tensor) of every parameter as llama.cpp's converter reads it: tied ones once (as the
    embedding), Conv1D weights as out × in, head-by-head q/k/v as [q; k; v], per-head norms stacked, fused
    linears split into the parts ``spec.splits`` names."""
    config = model.config
    transposed = tuple(f".{linear.path}.weight" for linear in get_arch_spec(config).linears if linear.transposed)
    per_head = tuple(f".{path}" for path in spec.per_head_qkv)
    out = []
    for name, param in model.named_parameters():
        data = param.detach().to(torch.float32).cpu()
        if name.endswith(transposed):
            data = data.T.contiguous()
        if name.rsplit(".", 1)[0].endswith(per_head):
            data = data.reshape(config.num_attention_heads, 3, -1, *data.shape[1:]).transpose(0, 1).reshape(data.shape)
        out.extend(_split(name, data, spec, config))
    return _stack_norms(out, spec.stacked_norms)


def _split(name: str, data: torch.Tensor, spec: GGUFSpec, config: Any) -> list[tuple[str, torch.Tensor]]:
    """``name`` split along its output rows into the parts ``spec.splits`` names, or unchanged."""
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    rows = {"q": config.num_attention_heads * head_dim(config), "kv": kv_heads * head_dim(config)}
    module_path, suffix = name.rsplit(".", 1)
    for path, parts in spec.splits:
        # A fused expert parameter is named by its path; a linear's weight and bias by their module's.
        stem, tail = (name, "") if name.endswith(f".{path}") else (module_path, f".{suffix}")
        if not stem.endswith(f".{path}"):
            continue
        axis = 0 if data.ndim == 1 else data.ndim - 2
        sizes = [data.shape[axis] // 2 if size == "half" else rows[size] for _, size in parts]
        prefix = stem.removesuffix(path)
        chunks = data.split(sizes, dim=axis)
        return [(f"{prefix}{new}{tail}", chunk.contiguous()) for (new, _), chunk in zip(parts, chunks, strict=True)]
    return [(name, data)]


def _stack_norms(tensors: list[tuple[str, torch.Tensor]], lists: tuple[str, ...]) -> list[tuple[str, torch.Tensor]]:
    """Per-head norms ``<list>.<head>.<suffix>`` stacked (heads × width) as ``<list's parent>.<suffix>``."""
    ends = tuple(f".{path}" for path in lists)
    grouped: dict[str, list[torch.Tensor]] = {}
    stacked = set()
    for name, data in tensors:
        stem, suffix = name.rsplit(".", 1)
        parent, _, head = stem.rpartition(".")
        if ends and head.isdigit() and parent.endswith(ends):
            name = f"{parent.rsplit('.', 1)[0]}.{suffix}"
            stacked.add(name)
        grouped.setdefault(name, []).append(data)
    return [(name, torch.stack(parts) if name in stacked else parts[0]) for name, parts in grouped.items()]


def _interleave_rope(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head from rotate-half order (HF) to interleaved pairs (llama.cpp's llama rope)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def _llama3_rope_factors(config: Any) -> np.ndarray | None:
    """llama.cpp's ``rope_freqs`` for Llama-3.1-style frequency scaling (what its converter computes)."""
    rope = _rope(config, "full_attention")
    if rope.get("rope_type") != "llama3":
        return None
    dim = head_dim(config)
    freqs = 1.0 / (rope.get("rope_theta", 10000.0) ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def verify_gguf(
    path: str | os.PathLike, metadata: dict[str, tuple[Any, Any, Any]], tensors: dict[str, tuple[np.ndarray, Any]]
) -> None:
    """Read ``path`` back and compare every key and tensor with what was meant to be written;
    ``GGUFExportError`` naming the first difference."""
    import gguf

    reader = gguf.GGUFReader(path)
    for key, (value, vtype, _) in metadata.items():
        field = reader.fields.get(key)
        if field is None:
            raise GGUFExportError(f"{path}: key {key} is missing")
        got = field.contents()
        if vtype == gguf.GGUFValueType.FLOAT32 or (isinstance(value, list) and value and isinstance(value[0], float)):
            same = np.allclose(np.asarray(got, dtype=np.float64), np.asarray(value, dtype=np.float32), rtol=0, atol=0)
        else:
            same = got == value
        if not same:
            raise GGUFExportError(f"{path}: key {key} reads back as {str(got)[:80]}, not {str(value)[:80]}")
    found = {t.name: t for t in reader.tensors}
    if set(found) != set(tensors):
        raise GGUFExportError(f"{path}: tensors {sorted(set(found) ^ set(tensors))[:5]} differ from those written")
    for name, (data, qtype) in tensors.items():
        tensor = found[name]
        if tensor.tensor_type != qtype:
            raise GGUFExportError(f"{path}: {name} is stored as {tensor.tensor_type.name}, not {qtype.name}")
        expected = data if qtype.name in _PLAIN else gguf.quants.quantize(data, qtype)
        if not np.array_equal(np.asarray(tensor.data).reshape(-1).view(np.uint8), expected.reshape(-1).view(np.uint8)):
            raise GGUFExportError(f"{path}: tensor {name} reads back different from the model's")


__all__ = ["OUTTYPES", "GGUFExportError", "gguf_metadata", "gguf_tensors", "save_gguf", "verify_gguf"]
