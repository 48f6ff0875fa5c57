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
from transformers import AutoConfig, AutoModelForCausalLM, GemmaTokenizer

from hf_projcomp.architectures import ARCHITECTURES
from hf_projcomp.export import GGUFExportError, save_gguf
from hf_projcomp.vocab import prune_tokenizer
from tests.test_tokenizer_files import frequent_ids, train_sentencepiece
from tests.tiny import MODEL_TYPES, TINY
from tests.tiny_tokenizers import HELD_OUT, TRAIN, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
GGUF_TYPES = [t for t in MODEL_TYPES if ARCHITECTURES[t].gguf is not None]
# A compressed shape: hidden_size (48) below heads × head_dim (64), as projected compression leaves it.
COMPRESSED = dict(hidden_size=48, intermediate_size=40)


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
    }.get(model_type, {})
    config = AutoConfig.for_model(
        model_type,
        **{**TINY, "vocab_size": len(tokenizer), "pad_token_id": None, **ids, **COMPRESSED, **extra, **overrides},
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
@pytest.mark.parametrize("model_type", GGUF_TYPES)
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
    no_layout = [t for t in MODEL_TYPES if t not in GGUF_TYPES]
    if no_layout:
        with pytest.raises(GGUFExportError, match=f"no GGUF layout is known for model_type '{no_layout[0]}'"):
            save_gguf(tiny(no_layout[0], tokenizer), tokenizer, tmp_path / "n.gguf")
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
