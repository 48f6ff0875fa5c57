"""GGUF export: written, read back with gguf's own reader and compared with an independent expectation
of llama.cpp's layout; run by llama.cpp itself when llama-cpp-python is installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GemmaTokenizer

from hf_projcomp.architectures import ARCHITECTURES
from hf_projcomp.export import GGUFExportError, save_gguf
from hf_projcomp.vocab import prune_tokenizer
from tests.test_tokenizer_files import frequent_ids, train_sentencepiece
from tests.tiny import MODEL_TYPES, TINY, tiny_config
from tests.tiny_tokenizers import HELD_OUT, TRAIN, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
# A compressed shape: hidden_size (48) below heads × head_dim (64), as projected compression leaves it
# (families whose d_model can't shrink keep 64), d_ff 40 (per expert in a mixture).
COMPRESSED = dict(hidden_size=48, intermediate_size=40)
# model_type -> the llama.cpp architecture its compressed model is written as; None: refused, because
# llama.cpp's only graph for it sizes attn_q / attn_output as n_embd × n_embd (written while d_model keeps
# heads × head_dim, see SQUARE_ONLY).
LLAMA_CPP_ARCH = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",  # llama.cpp's qwen2 and phi3 graphs are square too; llama runs the same network
    "qwen3": "qwen3",
    "gemma3_text": "gemma3",
    "phi3": "llama",
    "granite": "granite",
    "smollm3": "smollm3",
    "gemma2": "gemma2",
    "gpt2": "gpt2",  # d_model can't shrink (head_dim = hidden_size // heads): its square graph fits
    "gpt_neox": "gptneox",
    "stablelm": "stablelm",
    "mixtral": "llama",  # as llama.cpp's converter writes Mixtral: llama with experts
    "qwen3_moe": "qwen3moe",
    "olmoe": "olmoe",
    "phi": None,
    "starcoder2": None,
    "olmo2": None,
}
SQUARE_ONLY = {"phi": "phi2", "starcoder2": "starcoder2", "olmo2": "olmo2"}
assert set(LLAMA_CPP_ARCH) == set(MODEL_TYPES)
GGUF_TYPES = [t for t in MODEL_TYPES if LLAMA_CPP_ARCH[t]]
# Families with llama's q/k/v projections and gated MLP, whose weights the first test reads by name.
LLAMA_STYLE = ["llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "granite", "smollm3", "gemma2"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict:
    """Pruned tokenizers of both kinds: sentencepiece-style byte fallback (as Gemma) and byte-level BPE."""
    gemma_style = GemmaTokenizer.from_pretrained(train_sentencepiece(tmp_path_factory.mktemp("sp"), False))
    byte_level = tiny_tokenizer("byte_level")
    return {
        kind: prune_tokenizer(tok, frequent_ids(tok, 80))[0]
        for kind, tok in (("sentencepiece", gemma_style), ("byte_level", byte_level))
    }


def tiny(model_type: str, tokenizer, **overrides) -> torch.nn.Module:
    """A tiny model at the compressed widths (d_model kept where the family can't shrink it)."""
    torch.manual_seed(0)
    ids = {
        f"{name}_token_id": tokenizer.convert_tokens_to_ids(getattr(tokenizer, f"{name}_token"))
        for name in ("bos", "eos", "pad")
        if getattr(tokenizer, f"{name}_token")
    }
    extra = {
        "gemma3_text": {"query_pre_attn_scalar": TINY["head_dim"]},
        "gemma2": {"query_pre_attn_scalar": TINY["head_dim"]},
        # Not the defaults (all 1): a multiplier written wrong or not at all shows in llama.cpp's logits.
        "granite": {
            "embedding_multiplier": 3.0,
            "residual_multiplier": 0.5,
            "attention_multiplier": 0.2,
            "logits_scaling": 4.0,
        },
        # The real models' values, which llama.cpp's graphs hard-code (the config defaults differ).
        "qwen3_moe": {"norm_topk_prob": True},
        "olmoe": {"num_key_value_heads": 4},
    }.get(model_type, {})
    spec = ARCHITECTURES[model_type]
    fixed = spec.fixed_hidden(tiny_config(model_type, **{**extra, **overrides}))
    sizes = {"hidden_size": TINY["hidden_size"] if fixed else 48, spec.ffn_size: COMPRESSED["intermediate_size"]}
    config = tiny_config(
        model_type, **{"vocab_size": len(tokenizer), "pad_token_id": None, **ids, **sizes, **extra, **overrides}
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.2)
    model.name_or_path = "tiny-random"
    return model


def expected_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's llama rotary wants each head's rows as pairs (i, i + half): built row by row."""
    head = weight.shape[0] // heads
    out = np.empty_like(weight)
    for h in range(heads):
        for i in range(head // 2):
            out[h * head + 2 * i] = weight[h * head + i]
            out[h * head + 2 * i + 1] = weight[h * head + head // 2 + i]
    return out


def read(path: Path) -> tuple[dict, dict]:
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = {}
    for t in reader.tensors:
        data = np.asarray(t.data)
        if t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            data = gguf.quants.dequantize(data, t.tensor_type)
        tensors[t.name] = data.astype(np.float32).reshape(tuple(reversed([int(n) for n in t.shape])))
    return fields, tensors


@pytest.mark.parametrize("kind", ["sentencepiece", "byte_level"])
@pytest.mark.parametrize("model_type", LLAMA_STYLE)
def test_gguf_holds_llama_cpps_layout_of_the_model_and_the_pruned_tokenizer(model_type, kind, tokenizers, tmp_path):
    tokenizer = tokenizers[kind]
    model = tiny(model_type, tokenizer)
    path = save_gguf(model, tokenizer, tmp_path / "m.gguf")
    fields, tensors = read(path)
    config, hd = model.config, TINY["head_dim"]
    # qwen2 and phi3 graphs in llama.cpp assume heads × head_dim == hidden_size; compressed, they go as llama.
    arch = {"mistral": "llama", "qwen2": "llama", "phi3": "llama", "gemma3_text": "gemma3"}.get(model_type, model_type)
    permuted = arch in ("llama", "granite", "smollm3")  # llama.cpp's "normal" rotary: q/k rows interleaved
    assert fields["general.architecture"] == arch
    assert (fields[f"{arch}.embedding_length"], fields[f"{arch}.feed_forward_length"]) == (48, 40)
    assert (fields[f"{arch}.attention.key_length"], fields[f"{arch}.attention.head_count"]) == (hd, 4)
    assert fields[f"{arch}.block_count"] == 2 and fields[f"{arch}.vocab_size"] == len(tokenizer)

    # Tensors: every parameter once, as llama.cpp lays it out.
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}
    layer = "model.layers.0."
    if model_type == "phi3":
        qkv, gate_up = state[layer + "self_attn.qkv_proj.weight"], state[layer + "mlp.gate_up_proj.weight"]
        q, k, v = qkv[:64], qkv[64:96], qkv[96:]
        gate, up = gate_up[:40], gate_up[40:]
    else:
        q, k, v = (state[layer + f"self_attn.{n}_proj.weight"] for n in "qkv")
        gate, up = state[layer + "mlp.gate_proj.weight"], state[layer + "mlp.up_proj.weight"]
    if permuted:
        q, k = expected_rows(q, 4), expected_rows(k, 2)
    if model_type == "granite":  # its multipliers, as llama.cpp's converter names them
        assert (fields["granite.logit_scale"], fields["granite.residual_scale"]) == pytest.approx(
            (config.logits_scaling, config.residual_multiplier)
        )
    for name, want in (("attn_q", q), ("attn_k", k), ("attn_v", v), ("ffn_gate", gate), ("ffn_up", up)):
        assert np.array_equal(tensors[f"blk.0.{name}.weight"], want), name
    offset = 1.0 if model_type in ("gemma3_text", "gemma2") else 0.0  # Gemma's (1 + w) norms
    assert np.array_equal(tensors["blk.0.attn_norm.weight"], state[layer + "input_layernorm.weight"] + offset)
    assert np.array_equal(tensors["token_embd.weight"], state["model.embed_tokens.weight"])
    assert ("output.weight" in tensors) == (not config.tie_word_embeddings)
    split = 3 * config.num_hidden_layers if model_type == "phi3" else 0  # qkv -> q, k, v; gate_up -> gate, up
    assert len(tensors) == len(dict(model.named_parameters())) + split

    # Vocabulary: the pruned tokenizer's tokens and types, byte-fallback pieces typed BYTE.
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(tokenizer) == len(types)
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert [t for t, ty in zip(tokens, types, strict=True) if ty != 4] == [
        t for t, ty in zip(vocab, types, strict=True) if ty != 4
    ]
    assert types[tokenizer.eos_token_id] == 3 and fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert fields["tokenizer.ggml.add_bos_token"] == (tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id)
    if kind == "sentencepiece":
        assert fields["tokenizer.ggml.model"] == "llama" and fields["tokenizer.ggml.add_space_prefix"] is False
        byte_ids = [i for i, t in enumerate(vocab) if len(t) == 6 and t.startswith("<0x")]
        assert len(byte_ids) == 256 and all(types[i] == 6 for i in byte_ids)
    else:
        assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
        assert len(fields["tokenizer.ggml.merges"]) > 0 and set(types) <= {1, 3}


def llama_cpp_tensors(arch: str, fields: dict) -> dict[str, tuple[tuple[int, ...], bool]]:
    """What llama.cpp's ``load_tensors`` creates for ``arch`` and the hparams in ``fields``: GGUF name ->
    (ne, required). Transcribed from llama.cpp (src/llama-model.cpp at ec98e2002, src/models/*.cpp on master,
    where llama's optional q/k/v biases are sized by heads × head_dim); a file holding a tensor not listed
    here, or one of these at another shape, fails to load."""

    def hp(key, default=None):
        return fields.get(f"{arch}.{key}", default)

    E, F, L, H = hp("embedding_length"), hp("feed_forward_length"), hp("block_count"), hp("attention.head_count")
    V, Hkv, X = len(fields["tokenizer.ggml.tokens"]), hp("attention.head_count_kv", H), hp("expert_count", 0)
    hd = hp("attention.key_length", E // H)
    Q, KV = hd * H, hd * Hkv  # n_embd_head_k * n_head, n_embd_k_gqa
    square = arch in ("phi2", "starcoder2", "gpt2", "gptneox", "stablelm", "olmo2", "olmoe")  # {n_embd, n_embd}
    q = E if square else Q
    layer_norm = arch in ("phi2", "starcoder2", "gpt2", "gptneox", "stablelm")  # LLM_NORM: weight and bias
    want: dict[str, tuple[tuple[int, ...], bool]] = {}

    def put(name, *ne, required=True, bias=None):
        want[f"{name}.weight"] = (ne, required)
        if bias is not None:  # (ne, required) of the bias
            want[f"{name}.bias"] = bias

    put("token_embd", E, V)
    put("output_norm", E, bias=((E,), True) if layer_norm else None)
    if arch != "gemma2":  # gemma2 always duplicates token_embd
        required = arch in ("phi2", "gptneox", "stablelm", "olmo2", "olmoe")
        put("output", E, V, required=required, bias=((V,), True) if arch == "phi2" else None)
    if arch == "gpt2":
        put("position_embd", E, hp("context_length"))
    if arch in ("llama", "granite"):
        put("rope_freqs", hd // 2, required=False)
    for i in range(L):
        b = f"blk.{i}."
        if arch != "olmo2":
            put(b + "attn_norm", E, bias=((E,), True) if layer_norm else None)
        _llama_cpp_attention(put, b, arch, E, q, KV, hd, H, Hkv)
        _llama_cpp_ffn(put, b, arch, fields, E, F, X)
    return want


def _llama_cpp_attention(put, b, arch, E, q, KV, hd, H, Hkv) -> None:
    biased = arch in ("phi2", "gpt2", "gptneox", "starcoder2")
    if arch in ("gpt2", "gptneox"):
        put(b + "attn_qkv", E, E + 2 * KV, bias=((E + 2 * KV,), True))
    else:
        optional = {"llama": False, "granite": False, "stablelm": False, "starcoder2": False, "phi2": True}
        for name, rows in (("attn_q", q), ("attn_k", KV), ("attn_v", KV)):
            put(b + name, E, rows, bias=((rows,), optional[arch]) if arch in optional else None)
    o_bias = ((E,), True) if biased else ((E,), False) if arch in ("llama", "granite") else None
    put(b + "attn_output", q, E, bias=o_bias)
    norms = {
        "qwen3": (hd, hd),
        "qwen3moe": (hd, hd),
        "gemma3": (hd, hd),
        "olmo2": (E, Hkv * (E // H)),
        "olmoe": (E, E),
    }
    if arch in norms:
        put(b + "attn_q_norm", norms[arch][0])
        put(b + "attn_k_norm", norms[arch][1])
    if arch == "stablelm":
        put(b + "attn_q_norm", hd, H, required=False)
        put(b + "attn_k_norm", hd, Hkv, required=False)
    if arch in ("gemma2", "gemma3", "olmo2"):
        put(b + "post_attention_norm", E)
        put(b + "post_ffw_norm", E)


def _llama_cpp_ffn(put, b, arch, fields, E, F, X) -> None:
    if arch not in ("phi2", "olmo2"):
        layer_norm = arch in ("starcoder2", "gpt2", "gptneox", "stablelm")
        required = arch != "stablelm"  # StableLM 2 12B's parallel residual has none
        put(b + "ffn_norm", E, required=required, bias=((E,), required) if layer_norm else None)
    if X:
        used, F_exp = fields.get(f"{arch}.expert_used_count"), fields.get(f"{arch}.expert_feed_forward_length")
        Fx = (F_exp or F // used) if arch == "qwen3moe" else F
        put(b + "ffn_gate_inp", E, X)
        put(b + "ffn_gate_exps", E, Fx, X, required=arch != "llama")
        put(b + "ffn_up_exps", E, Fx, X)
        put(b + "ffn_down_exps", Fx, E, X)
    elif arch in ("phi2", "starcoder2", "gpt2", "gptneox"):  # ungated GELU MLP with biases
        put(b + "ffn_up", E, F, bias=((F,), True))
        put(b + "ffn_down", F, E, bias=((E,), True))
    else:
        optional = ((F,), False) if arch in ("llama", "granite") else None
        put(b + "ffn_gate", E, F, bias=optional)
        put(b + "ffn_up", E, F, bias=optional)
        put(b + "ffn_down", F, E, bias=((E,), False) if optional else None)


def assert_loads_in_llama_cpp(path: Path, arch: str, config) -> tuple[dict, dict]:
    """The file's tensors are exactly those llama.cpp creates for its hparams, at their shapes; returns them."""
    fields, tensors = read(path)
    assert fields["general.architecture"] == arch
    assert fields[f"{arch}.embedding_length"] == config.hidden_size
    want = llama_cpp_tensors(arch, fields)
    shapes = {name: tuple(reversed(t.shape)) for name, t in tensors.items()}  # ne order
    assert {n for n, (_, required) in want.items() if required} <= set(shapes), "a required tensor is missing"
    assert set(shapes) <= set(want), f"llama.cpp creates no {sorted(set(shapes) - set(want))}"
    assert {n: s for n, s in shapes.items()} == {n: want[n][0] for n in shapes}
    # llama.cpp's llama graph (load_hparams) and olmo2/olmoe/starcoder2 graphs assert n_rot == head_dim.
    if arch in ("llama", "olmo2", "olmoe", "starcoder2"):
        assert fields[f"{arch}.rope.dimension_count"] == fields[f"{arch}.attention.key_length"]
    return fields, tensors


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_family_is_written_as_llama_cpp_loads_it_or_refused_saying_why(model_type, tokenizers, tmp_path):
    tokenizer = tokenizers["byte_level"]
    arch = LLAMA_CPP_ARCH[model_type]
    model = tiny(model_type, tokenizer)
    if arch is None:  # square graph, no general one: refused once d_model shrank, written while it keeps 64
        arch = SQUARE_ONLY[model_type]
        with pytest.raises(
            GGUFExportError,
            match=rf"model_type '{model_type}': llama.cpp's {arch} graph sizes attn_q and attn_output as "
            r"n_embd × n_embd, but hidden_size=48 is not 4 heads × head_dim 16 = 64; \w+",
        ):
            save_gguf(model, tokenizer, tmp_path / "c.gguf")
        model = tiny(model_type, tokenizer, hidden_size=64)
    fields, tensors = assert_loads_in_llama_cpp(save_gguf(model, tokenizer, tmp_path / "m.gguf"), arch, model.config)
    config = model.config
    assert fields[f"{arch}.feed_forward_length"] == COMPRESSED["intermediate_size"]
    experts = ARCHITECTURES[model_type].ffn_groups(config)
    assert fields.get(f"{arch}.expert_count", 0) == (experts[0] if experts else 0)
    if experts:
        assert fields[f"{arch}.expert_used_count"] == config.num_experts_per_tok
    rotary = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
    if model_type != "gpt2":  # GPT-2's learned positions: no rope keys
        assert fields[f"{arch}.rope.dimension_count"] == int(TINY["head_dim"] * rotary)
    # llama.cpp's load_hparams reads LayerNorm families' epsilon under its own key.
    eps_key = (
        "layer_norm_epsilon"
        if arch in ("phi2", "starcoder2", "gpt2", "gptneox", "stablelm")
        else "layer_norm_rms_epsilon"
    )
    eps_field = {"gpt2": "layer_norm_epsilon", "starcoder2": "norm_epsilon"}.get(
        model_type, "layer_norm_eps" if eps_key == "layer_norm_epsilon" else "rms_norm_eps"
    )
    assert fields[f"{arch}.attention.{eps_key}"] == pytest.approx(getattr(config, eps_field))
    if model_type == "gpt_neox":
        assert fields["gptneox.use_parallel_residual"] is config.use_parallel_residual
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}
    for name, want in converter_tensors(model_type, state, config).items():
        assert np.array_equal(tensors[name], want), name


def converter_tensors(model_type: str, state: dict, config) -> dict[str, np.ndarray]:
    """Some of layer 0's tensors as llama.cpp's convert_hf_to_gguf.py writes them, built from the HF state."""
    out = {}
    if model_type == "gpt2":  # Conv1D weights are in × out: transposed
        out["blk.0.attn_qkv.weight"] = state["transformer.h.0.attn.c_attn.weight"].T
        out["blk.0.ffn_down.weight"] = state["transformer.h.0.mlp.c_proj.weight"].T
        out["position_embd.weight"] = state["transformer.wpe.weight"]
    if model_type == "gpt_neox":  # query_key_value rows go head by head, q_h k_h v_h: regrouped as q, k, v
        fused = state["gpt_neox.layers.0.attention.query_key_value.weight"]
        bias = state["gpt_neox.layers.0.attention.query_key_value.bias"]
        hd, heads = TINY["head_dim"], config.num_attention_heads
        order = [h * 3 * hd + part * hd + i for part in range(3) for h in range(heads) for i in range(hd)]
        out["blk.0.attn_qkv.weight"], out["blk.0.attn_qkv.bias"] = fused[order], bias[order]
    if ARCHITECTURES[model_type].experts:  # [gate; up] per expert split in two, experts leading
        gate_up, F = state["model.layers.0.mlp.experts.gate_up_proj"], COMPRESSED["intermediate_size"]
        out["blk.0.ffn_gate_exps.weight"] = np.stack([gate_up[e, :F] for e in range(gate_up.shape[0])])
        out["blk.0.ffn_up_exps.weight"] = np.stack([gate_up[e, F:] for e in range(gate_up.shape[0])])
        out["blk.0.ffn_down_exps.weight"] = state["model.layers.0.mlp.experts.down_proj"]
        out["blk.0.ffn_gate_inp.weight"] = state["model.layers.0.mlp.gate.weight"]
    if model_type == "mixtral":  # llama's rotary: q/k rows interleaved
        out["blk.0.attn_q.weight"] = expected_rows(state["model.layers.0.self_attn.q_proj.weight"], 4)
    if model_type in ("phi", "stablelm", "olmo2", "starcoder2"):  # plain renames
        out["blk.0.attn_q.weight"] = state["model.layers.0.self_attn.q_proj.weight"]
    return out


@pytest.mark.parametrize(
    "model_type, overrides, arch",
    [
        ("stablelm", dict(qk_layernorm=True, use_parallel_residual=True, use_qkv_bias=True), "stablelm"),
        ("gpt_neox", dict(use_parallel_residual=False), "gptneox"),
        ("olmo2", dict(hidden_size=64, tie_word_embeddings=True), "olmo2"),
        ("phi", dict(hidden_size=64), "phi2"),
    ],
)
def test_family_variants_are_written_as_llama_cpp_loads_them(model_type, overrides, arch, tokenizers, tmp_path):
    tokenizer = tokenizers["byte_level"]
    model = tiny(model_type, tokenizer, **overrides)
    fields, tensors = assert_loads_in_llama_cpp(save_gguf(model, tokenizer, tmp_path / "m.gguf"), arch, model.config)
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}
    if model_type == "stablelm":  # per-head q/k LayerNorms stacked heads × head_dim; no ffn_norm (parallel)
        norms = [state[f"model.layers.0.self_attn.q_layernorm.norms.{h}.weight"] for h in range(4)]
        assert np.array_equal(tensors["blk.0.attn_q_norm.weight"], np.stack(norms))
        assert tensors["blk.0.attn_k_norm.weight"].shape == (2, 16) and "blk.0.ffn_norm.weight" not in tensors
        assert np.array_equal(tensors["blk.0.attn_q.bias"], state["model.layers.0.self_attn.q_proj.bias"])
    if model_type == "gpt_neox":
        assert fields["gptneox.use_parallel_residual"] is False
    if model_type == "olmo2":  # llama.cpp's olmo2 requires output.weight: the tied head is written out
        assert np.array_equal(tensors["output.weight"], state["model.embed_tokens.weight"])
    if model_type == "phi":  # Phi-2's LM head bias and partial rotary
        assert np.array_equal(tensors["output.bias"], state["lm_head.bias"])
        assert fields["phi2.rope.dimension_count"] == 8


@pytest.mark.parametrize(
    "model_type, overrides, reason",
    [
        (
            "qwen3_moe",
            dict(norm_topk_prob=False),
            "norm_topk_prob=False, but llama.cpp's qwen3moe renormalises the top-k routing weights",
        ),
        (
            "olmoe",
            dict(num_key_value_heads=2),
            "num_key_value_heads=2 differs from num_attention_heads=4: llama.cpp's olmoe sizes attn_k_norm as n_embd",
        ),
        ("phi", dict(qk_layernorm=True), "qk_layernorm=True, but llama.cpp's phi2 has no q/k LayerNorms"),
        ("starcoder2", dict(hidden_size=64, use_bias=False), "use_bias=False, but llama.cpp's starcoder2 requires"),
    ],
)
def test_configs_llama_cpp_would_run_differently_are_refused(model_type, overrides, reason, tokenizers, tmp_path):
    tokenizer = tokenizers["byte_level"]
    with pytest.raises(GGUFExportError, match=f"model_type '{model_type}': {reason}"):
        save_gguf(tiny(model_type, tokenizer, **overrides), tokenizer, tmp_path / "m.gguf")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("outtype, tolerance", [("f16", 1e-3), ("bf16", 8e-3), ("q8_0", 2e-2)])
def test_lower_precision_outtypes_store_the_weights_within_their_precision(outtype, tolerance, tokenizers, tmp_path):
    model = tiny("llama", tokenizers["byte_level"], intermediate_size=64)
    _, exact = read(save_gguf(model, tokenizers["byte_level"], tmp_path / "f32.gguf"))
    path = save_gguf(model, tokenizers["byte_level"], tmp_path / f"{outtype}.gguf", outtype)
    fields, low = read(path)
    assert fields["general.file_type"] == {"f16": 1, "bf16": 32, "q8_0": 7}[outtype]
    reader = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert reader["blk.0.attn_norm.weight"] == "F32" and reader["blk.0.ffn_down.weight"] == outtype.upper()
    for name in exact:
        scale = np.abs(exact[name]).max()
        assert np.abs(low[name] - exact[name]).max() <= tolerance * scale, name


def test_export_errors_name_the_fix_and_leave_no_file(tokenizers, tmp_path, monkeypatch):
    tokenizer = tokenizers["byte_level"]
    with pytest.raises(GGUFExportError, match="query_pre_attn_scalar=256 differs from head_dim=16"):
        save_gguf(tiny("gemma3_text", tokenizer, query_pre_attn_scalar=256), tokenizer, tmp_path / "g.gguf")
    with pytest.raises(GGUFExportError, match=r"skips RoPE in every 4th layer only"):
        save_gguf(tiny("smollm3", tokenizer, no_rope_layers=[0, 1]), tokenizer, tmp_path / "s.gguf")
    model = tiny("llama", tokenizer)
    save_gguf(model, tokenizer, tmp_path / "m.gguf")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_gguf(model, tokenizer, tmp_path / "m.gguf")
    with pytest.raises(ValueError, match="outtype must be one of"):
        save_gguf(model, tokenizer, tmp_path / "x.gguf", "q4_k")

    import hf_projcomp.export.gguf as module

    def corrupt(path, metadata, tensors):
        raise GGUFExportError("simulated read-back difference")

    monkeypatch.setattr(module, "verify_gguf", corrupt)
    with pytest.raises(GGUFExportError, match="simulated"):
        save_gguf(model, tokenizer, tmp_path / "bad.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # no temporary file left either


def test_an_unknown_byte_level_pre_tokenizer_asks_for_its_name(tokenizers, tmp_path):
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads(tokenizers["byte_level"].backend_tokenizer.to_str())
    data["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r"\p{L}+|\p{N}+"}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ],
    }
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)), eos_token=tokenizers["byte_level"].eos_token
    )
    model = tiny("qwen2", tokenizer)
    with pytest.raises(ValueError, match=r"pass pre_tokenizer= \(--pre-tokenizer"):
        save_gguf(model, tokenizer, tmp_path / "m.gguf")
    path = save_gguf(model, tokenizer, tmp_path / "m.gguf", pre_tokenizer="qwen2")
    assert read(path)[0]["tokenizer.ggml.pre"] == "qwen2"


def test_cli_export_writes_a_verified_gguf(tiny_base_dir, tmp_path):
    out = tmp_path / "tiny.gguf"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_projcomp.cli",
            "export",
            str(tiny_base_dir),
            "--gguf",
            str(out),
            "--outtype",
            "q8_0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "read back and verified" in run.stdout and out.is_file()
    again = subprocess.run(
        [sys.executable, "-m", "hf_projcomp.cli", "export", str(tiny_base_dir), "--gguf", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 2 and "already exists; pass --overwrite" in again.stderr


@pytest.mark.parametrize("kind", ["sentencepiece", "byte_level"])
@pytest.mark.parametrize("model_type", GGUF_TYPES)
def test_llama_cpp_runs_the_gguf_as_transformers_does(model_type, kind, tokenizers, tmp_path):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (building it takes ~30 min on 2 cores; CI skips this)"
    )
    tokenizer = tokenizers[kind]
    model = tiny(model_type, tokenizer)
    path = save_gguf(model, tokenizer, tmp_path / "m.gguf")
    text = HELD_OUT[3] + " " + TRAIN[0]
    ids = tokenizer(text)["input_ids"][:32]
    llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
    try:
        # add_bos=True: add the special tokens the GGUF says to add (bos and/or eos), as transformers does
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == (tokenizer(text)["input_ids"])
        llm.eval(ids)
        got = np.asarray(llm.scores[: len(ids)])
    finally:
        llm.close()
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max()
