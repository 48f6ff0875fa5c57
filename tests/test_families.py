"""Every family in the configurations the per-family tests don't use: the head tied the other way,
``head_dim`` absent from the config, biases on, q/k norms and residual layout switched, rope scaling,
sliding windows. Each variant must start as the hard-pruned model, merge exactly, keep its ties and
parameter count, and reload without hf_projcomp in a fresh process (one process for all variants).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoConfig, AutoModelForCausalLM

from hf_projcomp import ProjCompConfig, get_projcomp_model, hard_prune
from hf_projcomp.architectures import ARCHITECTURES, ffn_size, head_dim
from tests.tiny import MODEL_TYPES, TINY, fresh_env, target_sizes, tiny_config, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

_BIAS_FIELDS = ("attention_bias", "mlp_bias", "use_qkv_bias", "use_bias")
_LAYOUT_FIELDS = ("qk_layernorm", "use_parallel_residual", "scale_attn_by_inverse_layer_idx")


def variants(model_type: str) -> dict[str, dict]:
    """Config overrides per variant name, from the fields the family's config actually has."""
    fields = tiny_config(model_type).to_dict()
    out = {"tie_flipped": {"tie_word_embeddings": not fields["tie_word_embeddings"]}}
    if "head_dim" in fields:  # absent, transformers derives it (or uses the family default: Gemma's 256)
        out["head_dim_absent"] = {"head_dim": None}
    if "n_inner" in fields:  # GPT-2's d_ff: 4 × d_model when absent
        out["n_inner_absent"] = {"n_inner": None}
    rope = fields.get("rope_parameters")  # None: learned positions (GPT-2)
    if rope is not None:
        out["rope_scaled"] = _rope_scaled(model_type, rope, fields)
    biases = {f: not fields[f] for f in _BIAS_FIELDS if f in fields}
    if biases:
        out["biases_flipped"] = biases
    layout = {f: not fields[f] for f in _LAYOUT_FIELDS if f in fields}
    if layout:
        out["layout_flipped"] = layout
    if "sliding_window" in fields:
        window = {"sliding_window": 4}
        if "use_sliding_window" in fields:
            window["use_sliding_window"] = True
        if "max_window_layers" in fields:
            window["max_window_layers"] = 1
        out["sliding_window_4"] = window
    return out


def _rope_scaled(model_type: str, rope: dict, fields: dict) -> dict:
    linear = {"rope_type": "linear", "factor": 2.0}
    nested = all(isinstance(v, dict) for v in rope.values())  # per layer type (Gemma-3)
    scaled = {k: {**v, **linear} for k, v in rope.items()} if nested else {**rope, **linear}
    try:
        tiny_config(model_type, rope_parameters=scaled)
    except StrictDataclassClassValidationError:  # Phi-3 accepts long-context "longrope" scaling only
        half = TINY["head_dim"] // 2
        scaled = {
            **rope,
            "rope_type": "longrope",
            "short_factor": [1.0] * half,
            "long_factor": [2.0] * half,
            "original_max_position_embeddings": TINY["max_position_embeddings"] // 2,
        }
    if "original_max_position_embeddings" in fields:  # Phi-3 reads it from the top level, over rope_parameters'
        return {"rope_parameters": scaled, "original_max_position_embeddings": TINY["max_position_embeddings"] // 2}
    return {"rope_parameters": scaled}


CASES = [(m, name) for m in MODEL_TYPES for name in variants(m)]


def variant_model(model_type: str, name: str) -> torch.nn.Module:
    overrides = dict(variants(model_type)[name])
    without = tuple(k for k, v in overrides.items() if v is None)  # absent: the family's own default
    return tiny_model(model_type, without=without, **{k: v for k, v in overrides.items() if v is not None})


def check_variant(model_type: str, name: str, input_ids: torch.Tensor) -> tuple:
    """(base model, merged model, |projected@init − hard-pruned| max,
    relative |projected − merged| after perturbing)."""
    model = variant_model(model_type, name)
    target = target_sizes(model_type, config=model.config)
    pc = get_projcomp_model(model, ProjCompConfig(**target, importance="magnitude"), progress=False)
    sel = pc.selection()
    with torch.no_grad():
        pruned = hard_prune(model, sel.hidden, sel.ffn)(input_ids=input_ids).logits
        init = (pc(input_ids=input_ids).logits - pruned).abs().max().item()
        gen = torch.Generator().manual_seed(2)
        for p in pc.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
        projected = pc(input_ids=input_ids).logits
    assert (projected - pruned).abs().max() > 1e-3, "the perturbation had no effect"
    merged = pc.merge_and_unload()
    with torch.no_grad():
        vanilla = merged(input_ids=input_ids).logits
    rel = ((projected - vanilla).abs().max() / vanilla.abs().max()).item()
    return model, merged, init, rel


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """Every variant built, checked and saved once; logits reloaded in one fresh process."""
    root = tmp_path_factory.mktemp("families")
    input_ids = torch.randint(3, TINY["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
    results = {}
    for model_type, name in CASES:
        base, merged, init, rel = check_variant(model_type, name, input_ids)
        path = root / f"{model_type}-{name}"
        merged.save_pretrained(path)
        with torch.no_grad():
            torch.save(merged(input_ids=input_ids).logits, path / "expected.pt")
        results[model_type, name] = dict(base=base, merged=merged, init=init, rel=rel, path=path)
    torch.save(input_ids, root / "ids.pt")
    script = f"""
import json, sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM
ids, out = torch.load({str(root / "ids.pt")!r}), {{}}
for path in sorted(p for p in Path({str(root)!r}).iterdir() if p.is_dir()):
    m = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        diff = (m(input_ids=ids).logits - torch.load(path / "expected.pt")).abs().max().item()
    out[path.name] = [type(m).__name__, m.get_output_embeddings().weight is m.get_input_embeddings().weight, diff]
assert "hf_projcomp" not in sys.modules
print(json.dumps(out))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=fresh_env(), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reloaded = json.loads(proc.stdout.strip().splitlines()[-1])
    for (model_type, name), result in results.items():
        result["reloaded"] = reloaded[f"{model_type}-{name}"]
    return results


@pytest.mark.parametrize("model_type, name", CASES, ids=[f"{m}-{n}" for m, n in CASES])
def test_variant_prunes_merges_and_reloads(checked, model_type, name):
    result = checked[model_type, name]
    base, merged = result["base"], result["merged"]
    assert result["init"] <= 1e-5, f"projected at init vs hard-pruned: {result['init']}"
    assert result["rel"] <= 1e-4, f"merged vs projected: relative {result['rel']}"
    cls, tied, diff = result["reloaded"]
    assert cls == type(base).__name__ and diff <= 1e-5
    base_tied = base.get_output_embeddings().weight is base.get_input_embeddings().weight
    assert tied == base_tied == bool(merged.config.tie_word_embeddings)
    # Parameter count: the base config at the target widths, built by transformers (not by our code).
    target = target_sizes(model_type, config=base.config)
    fields = {
        **base.config.to_dict(),
        "hidden_size": target["hidden_size"],
        ARCHITECTURES[model_type].ffn_size: target["intermediate_size"],
    }
    if target["hidden_size"] != base.config.hidden_size:
        fields["head_dim"] = head_dim(base.config)
    expected = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(
            model_type,
            **{k: v for k, v in fields.items() if k not in ("model_type", "transformers_version", "architectures")},
        )
    )
    assert merged.num_parameters() == expected.num_parameters()
    assert ffn_size(merged.config) == target["intermediate_size"]
    assert head_dim(merged.config) == head_dim(base.config)  # written where it was derived and d_model shrank
    # The variant's settings reach the config (but the widths that shrank).
    for field in set(variants(model_type)[name]) - {"head_dim", ARCHITECTURES[model_type].ffn_size}:
        assert getattr(merged.config, field, None) == getattr(base.config, field, None), field
