"""The real-model path: Gemma-3-270M from the ``demo`` extra, projected 640→512 / 2048→1024.

Slow on CPU (a converted checkpoint is cached under ~/.cache/hf_projcomp after the first run), and
the only test that proves the Gemma-specific corrections on pretrained weights.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from hf_projcomp import ProjCompConfig, get_projcomp_model, hard_prune
from hf_projcomp.texts import CALIBRATION, bundled_text
from tests.tiny import fresh_env

VALID = bundled_text(CALIBRATION, path=True)


@pytest.fixture(scope="module")
def projected(gemma):
    model, tokenizer = gemma
    lines = [line for line in VALID.read_text(encoding="utf-8").splitlines() if len(line) > 200]
    calibration = [tokenizer(line, return_tensors="pt").input_ids[:, :128] for line in lines[:4]]
    config = ProjCompConfig(hidden_size=512, intermediate_size=1024, importance="activation")
    return get_projcomp_model(model, config, calibration_data=calibration, progress=False)


@pytest.fixture(scope="module")
def sample_ids(gemma):
    _, tokenizer = gemma
    return tokenizer(
        "The tower is 324 metres tall, about the same height as an 81-storey building.", return_tensors="pt"
    ).input_ids


def test_selection_and_step0_equals_hard_pruned(gemma, projected, sample_ids):
    model, _ = gemma
    cfg, sel = projected.projcomp_config, projected.selection()
    assert (cfg.base_hidden_size, cfg.hidden_size, cfg.intermediate_size) == (640, 512, 1024)
    assert len(sel.ffn) == 18 and cfg.base_model_name_or_path == "google/gemma-3-270m"
    pruned = hard_prune(model, sel.hidden, sel.ffn)
    with torch.no_grad():
        diff = (projected(input_ids=sample_ids).logits - pruned(input_ids=sample_ids).logits).abs().max().item()
    assert diff <= 1e-4, diff


def test_gradients_reach_only_projections_and_norms(projected, sample_ids):
    projected.train()
    projected(input_ids=sample_ids, labels=sample_ids).loss.backward()
    assert all(p.grad is None for p in projected.model.parameters())
    adapter = projected.trainable_parameters()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in adapter)
    with torch.no_grad():  # one SGD step stands in for training before the merge test
        for p in adapter:
            p.sub_(1e-2 * p.grad)
            p.grad = None
    projected.eval()


def test_merged_matches_and_reloads_with_plain_transformers(gemma, projected, sample_ids, tmp_path):
    _, tokenizer = gemma
    merged = projected.merge_and_unload()
    with torch.no_grad():
        expected = projected(input_ids=sample_ids).logits
        got = merged(input_ids=sample_ids).logits
    assert ((expected - got).abs().max() / got.abs().max()).item() <= 1e-4
    assert merged.lm_head.weight is merged.model.embed_tokens.weight
    assert merged.num_parameters() < 0.8 * projected.model.num_parameters()

    merged.save_pretrained(tmp_path / "small")
    tokenizer.save_pretrained(tmp_path / "small")
    torch.save(sample_ids, tmp_path / "ids.pt")
    script = f"""
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path = {str(tmp_path / "small")!r}
m = AutoModelForCausalLM.from_pretrained(path).eval()
AutoTokenizer.from_pretrained(path)
assert "hf_projcomp" not in sys.modules
assert m.config.hidden_size == 512 and m.config.intermediate_size == 1024
with torch.no_grad():
    torch.save(m(input_ids=torch.load({str(tmp_path / "ids.pt")!r})).logits, {str(tmp_path / "logits.pt")!r})
"""
    out = subprocess.run([sys.executable, "-c", script], env=fresh_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    reloaded = torch.load(tmp_path / "logits.pt")
    assert ((reloaded - got).abs().max() / got.abs().max()).item() <= 1e-5
