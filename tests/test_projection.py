"""Projected model: equals the hard-pruned model at init, merges exactly, saves and reloads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from hf_projcomp import ProjCompConfig, ProjCompModel, get_projcomp_model, hard_prune
from hf_projcomp.architectures import ARCHITECTURES, ffn_size, head_dim
from hf_projcomp.projection import project_weight
from hf_projcomp.sizing import count_target_parameters
from tests.tiny import FAMILIES, TINY, expected_num_parameters, fresh_env, target_sizes, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

TARGET = dict(hidden_size=48, intermediate_size=64, importance="magnitude")


def perturb_trainable(pc: ProjCompModel, seed: int = 2) -> None:
    """Stands in for training: every trainable tensor moves."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pc.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)


@pytest.mark.parametrize("importance", ["magnitude", "activation"])
def test_init_equals_hard_pruned(model_type, input_ids, importance):
    model = tiny_model(model_type)
    calib = [torch.randint(3, TINY["vocab_size"], (2, 16)) for _ in range(2)] if importance == "activation" else None
    target = target_sizes(model_type)
    pc = get_projcomp_model(
        model, ProjCompConfig(**target, importance=importance), calibration_data=calib, progress=False
    )
    sel = pc.selection()
    pruned = hard_prune(model, sel.hidden, sel.ffn)
    with torch.no_grad():
        diff = (pc(input_ids=input_ids).logits - pruned(input_ids=input_ids).logits).abs().max().item()
    assert diff <= 1e-5, f"{model_type}: max abs diff {diff}"
    experts = tuple(ARCHITECTURES[model_type].ffn_groups(model.config))
    assert len(sel.hidden) == target["hidden_size"] and all(idx.shape == (*experts, 64) for idx in sel.ffn)
    if experts:  # each expert ranks its own channels
        assert any(not torch.equal(idx[0], idx[e]) for idx in sel.ffn for e in range(1, experts[0]))


def test_merge_matches_projected_after_training(model_type, input_ids, tmp_path):
    model = tiny_model(model_type)
    target = target_sizes(model_type)
    pc = get_projcomp_model(model, ProjCompConfig(**target, importance="magnitude"))
    perturb_trainable(pc)
    merged = pc.merge_and_unload()
    with torch.no_grad():
        projected = pc(input_ids=input_ids).logits
        vanilla = merged(input_ids=input_ids).logits
        untrained = hard_prune(model, pc.selection().hidden, pc.selection().ffn)
        assert (untrained(input_ids=input_ids).logits - projected).abs().max() > 1e-3, "perturbation had no effect"
    rel = ((projected - vanilla).abs().max() / vanilla.abs().max()).item()
    assert rel <= 1e-4, f"{model_type}: relative diff {rel}"
    assert type(merged) is type(model)
    assert merged.num_parameters() == expected_num_parameters(model_type, merged.config)
    assert (merged.config.hidden_size, ffn_size(merged.config)) == (target["hidden_size"], 64)
    assert head_dim(merged.config) == TINY["head_dim"]
    assert all(p.requires_grad for p in merged.parameters())

    merged.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    hidden_key = type(merged.config).attribute_map.get("hidden_size", "hidden_size")  # GPT-2: n_embd
    assert (config[hidden_key], config[ARCHITECTURES[model_type].ffn_size]) == (target["hidden_size"], 64)
    # head_dim is written where the base derived it from a d_model that shrank, and only there.
    assert config.get("head_dim", 16) == 16
    assert ("head_dim" in config) == (
        "head_dim" in model.config.to_dict() or target["hidden_size"] < TINY["hidden_size"]
    )
    assert "quantization_config" not in config


def test_merged_reloads_in_fresh_process_without_hf_projcomp(model_type, input_ids, tmp_path):
    model = tiny_model(model_type)
    pc = get_projcomp_model(model, ProjCompConfig(**target_sizes(model_type), importance="magnitude"))
    perturb_trainable(pc)
    merged = pc.merge_and_unload()
    merged.save_pretrained(tmp_path / "small")
    torch.save(input_ids, tmp_path / "ids.pt")
    script = f"""
import sys, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(tmp_path / "small")!r}).eval()
assert "hf_projcomp" not in sys.modules
with torch.no_grad():
    torch.save(m(input_ids=torch.load({str(tmp_path / "ids.pt")!r})).logits, {str(tmp_path / "logits.pt")!r})
print(type(m).__name__, m.get_output_embeddings().weight is m.get_input_embeddings().weight)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=fresh_env(), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    tied = FAMILIES[model_type][0]
    assert out.stdout.split()[-2:] == [type(model).__name__, str(tied)]
    with torch.no_grad():
        expected = merged(input_ids=input_ids).logits
    assert torch.allclose(torch.load(tmp_path / "logits.pt"), expected, rtol=0, atol=1e-5)
    with safe_open(tmp_path / "small" / "model.safetensors", "pt") as f:
        vocab_matrices = [
            k
            for k in f.keys()
            if f.get_slice(k).get_shape()[:1] == [merged.config.vocab_size] and len(f.get_slice(k).get_shape()) == 2
        ]
    assert len(vocab_matrices) == (1 if tied else 2), vocab_matrices  # a tied head is saved once


def test_adapter_round_trip_is_bit_exact(model_type, input_ids, tmp_path):
    pc = get_projcomp_model(tiny_model(model_type), ProjCompConfig(**target_sizes(model_type), importance="magnitude"))
    perturb_trainable(pc)
    pc.save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    norms = {f"base_model.compressed.{n}" for n, p in pc.compressed.named_parameters() if p.requires_grad}
    assert keys and all(
        k.startswith(("base_model.projections.", "base_model.selection_")) or k in norms for k in keys
    ), "base weights leaked into adapter"

    reloaded = ProjCompModel.from_pretrained(tiny_model(model_type), tmp_path / "adapter")
    assert reloaded.projcomp_config.to_dict() == {**pc.projcomp_config.to_dict(), "inference_mode": False}
    original, restored = pc.adapter_state_dict(), reloaded.adapter_state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    with torch.no_grad():
        assert torch.equal(pc(input_ids=input_ids).logits, reloaded(input_ids=input_ids).logits)


def test_gradients_reach_only_projections_and_norms(model_type, input_ids):
    pc = get_projcomp_model(tiny_model(model_type), ProjCompConfig(**target_sizes(model_type), importance="magnitude"))
    pc.train()
    pc(input_ids=input_ids, labels=input_ids).loss.backward()
    assert all(p.grad is None for p in pc.model.parameters())
    adapter = {n: p for n, p in pc.adapter_state_dict().items() if p.is_floating_point()}
    assert all(p.grad is not None for p in adapter.values())
    # At init the A's already receive the full dL/dW_c.
    assert any(p.grad.abs().sum() > 0 for n, p in adapter.items() if n.endswith(".a"))
    assert {id(p) for p in pc.parameters() if p.requires_grad} == {id(p) for p in adapter.values()}


def test_base_dtype_bfloat16_keeps_projections_fp32(input_ids):
    pc = get_projcomp_model(tiny_model("llama"), ProjCompConfig(**TARGET, base_dtype="bfloat16"))
    assert all(p.dtype == torch.bfloat16 for p in pc.model.parameters())
    assert all(p.dtype == torch.float32 for p in pc.trainable_parameters())
    pc(input_ids=input_ids, labels=input_ids).loss.backward()
    assert pc.merge_and_unload().dtype == torch.float32


def test_target_params_fraction_picks_the_closest_size_on_the_grid():
    """Hidden (multiples of 8 and of the head count) and d_ff (multiples of 8) shrink by one ratio; the
    chosen pair is the one whose non-embedding count is closest to the goal, found by brute force."""
    model = tiny_model("llama", hidden_size=256, intermediate_size=512, head_dim=64)
    pc = get_projcomp_model(model, ProjCompConfig(target_params=0.5, importance="magnitude"), progress=False)
    cfg = pc.projcomp_config

    def non_embedding(hidden: int, inter: int) -> int:  # untied: embedding and LM head are 96 × hidden each
        return count_target_parameters(model, hidden, inter) - 2 * 96 * hidden

    base = model.num_parameters() - 2 * 96 * 256
    small = pc.merge_and_unload().num_parameters() - 2 * 96 * cfg.hidden_size
    assert small == non_embedding(cfg.hidden_size, cfg.intermediate_size)
    grid = {
        (max(8, round(256 * r / 8) * 8), max(8, round(512 * r / 8) * 8)) for r in torch.linspace(0, 1, 4001).tolist()
    }
    counts = {s: non_embedding(*s) for s in grid}
    best = min(counts.values(), key=lambda n: abs(n - 0.5 * base))
    assert abs(small - 0.5 * base) == abs(best - 0.5 * base)
    assert abs(small / base - 0.5) < 0.02
    assert cfg.hidden_size % TINY["num_attention_heads"] == 0


@pytest.mark.parametrize("base_dtype", [None, "bfloat16"])
def test_merged_model_keeps_the_dtype_the_base_had(input_ids, base_dtype):
    """A bfloat16 base merges to bfloat16 (P and A train in float32); base_dtype, a memory saving,
    does not change what comes out; dtype= overrides."""
    model = tiny_model("gemma3_text").to(torch.bfloat16)
    pc = get_projcomp_model(model, ProjCompConfig(**TARGET, base_dtype=base_dtype), progress=False)
    perturb_trainable(pc)
    assert all(p.dtype == torch.float32 for p in pc.trainable_parameters())
    merged, exact = pc.merge_and_unload(), pc.merge_and_unload(dtype=torch.float32)
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16} and merged.config.dtype == torch.bfloat16
    assert {p.dtype for p in exact.parameters()} == {torch.float32}
    for (name, got), (_, want) in zip(merged.state_dict().items(), exact.state_dict().items(), strict=True):
        assert torch.equal(got, want.to(torch.bfloat16)), name
    with torch.no_grad():
        projected, vanilla = pc(input_ids=input_ids).logits, exact(input_ids=input_ids).logits
    assert ((projected - vanilla).abs().max() / vanilla.abs().max()).item() <= 1e-4


def test_projections_live_on_the_base_device_and_the_base_is_not_copied():
    """Built on the meta device (the CPU-only stand-in for an accelerator), every P, A and target weight
    is created there; the base model's parameters stay the very same objects."""
    source = tiny_model("llama")
    built = get_projcomp_model(source, ProjCompConfig(**TARGET), progress=False)
    recorded = built.projcomp_config
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(source.config)
    before = {name: p for name, p in base.named_parameters()}
    pc = ProjCompModel(base, {"default": recorded})  # a recorded config builds a placeholder of its sizes
    pc.set_selection(built.selection())
    assert {p.device.type for p in pc.parameters()} == {"meta"} and {b.device.type for b in pc.buffers()} == {"meta"}
    assert pc.model is base and all(p is before[n] for n, p in base.named_parameters())
    projections = list(pc.projections.values())
    assert all(t.device.type == "meta" for m in projections for t in (m.a, m.p_in, m.p_out) if t is not None)


def test_to_moves_projections_with_the_model(input_ids):
    pc = get_projcomp_model(tiny_model("qwen3"), ProjCompConfig(**TARGET), progress=False)
    with torch.no_grad():
        expected = pc(input_ids=input_ids).logits.double()
    pc.to(torch.float64)
    assert {p.dtype for p in pc.trainable_parameters()} == {torch.float64}
    with torch.no_grad():
        assert torch.allclose(pc(input_ids=input_ids).logits, expected, atol=1e-5)


@pytest.mark.parametrize("sides", ["in", "out", "both-left", "both-right"])
def test_projected_weight_gradients_and_what_backward_keeps(sides):
    """project_weight's hand-written backward equals autograd's, and keeps no float32 copy of a
    bfloat16 base weight (only the product it needs, which is smaller)."""
    gen = torch.Generator().manual_seed(0)
    chunks, out_b, in_b = 2, 24, 40
    out_t, in_t = {"in": (24, 16), "out": (12, 40), "both-left": (6, 30), "both-right": (20, 8)}[sides]
    weight = torch.randn(chunks * out_b, in_b, generator=gen).to(torch.bfloat16)
    p_in = torch.randn(in_b, in_t, generator=gen, dtype=torch.float64) if in_t != in_b else None
    p_out = torch.randn(chunks, out_t, out_b, generator=gen, dtype=torch.float64) if out_t != out_b else None
    a = torch.randn(chunks * out_t, in_t, generator=gen, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (p_in, p_out, a) if t is not None]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        got = project_weight(weight, p_in, p_out, a, scale=0.5)
    w = weight.double().reshape(chunks, out_b, in_b)
    w = w if p_out is None else p_out @ w
    w = w if p_in is None else w @ p_in
    want = a + 0.5 * w.reshape(a.shape)
    grad = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    assert torch.allclose(got, want)
    for g1, g2 in zip(torch.autograd.grad(got, leaves, grad), torch.autograd.grad(want, leaves, grad), strict=True):
        assert torch.allclose(g1, g2)
    assert not any(t.numel() >= weight.numel() and t.dtype != torch.bfloat16 for t in saved)


def test_gemma_embedding_scale_and_tied_head_are_corrected():
    """Embedding output and tied logits of the pruned Gemma equal the base's restricted to kept dims."""
    model = tiny_model("gemma3_text")
    hidden = list(range(0, 64, 4)) + list(range(1, 64, 4)) + list(range(2, 64, 4))
    hidden.sort()
    small = hard_prune(model, hidden, [list(range(96))] * 2)
    ids = torch.arange(3, 20)
    idx = torch.tensor(hidden)
    with torch.no_grad():
        base_emb = model.model.embed_tokens(ids)[:, idx]
        assert torch.allclose(small.model.embed_tokens(ids), base_emb, atol=1e-5)
        h = torch.randn(5, 48)
        w = model.model.norm.weight[idx]
        normed = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + model.config.rms_norm_eps) * (1 + w)
        expected = normed @ model.lm_head.weight[:, idx].T
        assert torch.allclose(small.lm_head(small.model.norm(h)), expected, atol=1e-4)
