"""COMPACT on the real Gemma-3-270M: 50% of the parameters, training-free, reloaded with plain transformers.

The quality guard scores dev text (``tests/data/wikitext2_dev_head.txt``, the WikiText-2 validation
articles right after the bundled calibration text), never the test split."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_projcomp.compact import compact_prune
from hf_projcomp.evaluate import bits_per_byte, load_text
from hf_projcomp.texts import CALIBRATION, bundled_text
from tests.tiny import fresh_env

VALID = bundled_text(CALIBRATION, path=True)
DEV = Path(__file__).parent / "data" / "wikitext2_dev_head.txt"
SPLIT_40 = (24_625, 1792)  # the split chosen at 40% before the refit existed (whole calibration text)


@pytest.fixture(scope="module")
def saved(gemma, tmp_path_factory):
    model, tokenizer = gemma
    small, small_tok, _ = compact_prune(
        model, tokenizer, str(VALID), target_params=0.5, num_sequences=8, sequence_length=256, progress=False
    )
    out = tmp_path_factory.mktemp("compact")
    small.save_pretrained(out)
    small_tok.save_pretrained(out)
    return out, small.num_parameters() / model.num_parameters()


def test_half_the_parameters_and_bits_per_byte_within_guard(gemma, saved):
    model, tokenizer = gemma
    path, ratio = saved
    assert abs(ratio - 0.5) < 0.005
    small = AutoModelForCausalLM.from_pretrained(path).eval()
    small_tok = AutoTokenizer.from_pretrained(path)
    text = load_text(DEV)
    base_bpb = bits_per_byte(model, tokenizer, text, progress=False)
    small_bpb = bits_per_byte(small, small_tok, text, progress=False)
    assert base_bpb == pytest.approx(1.364, abs=0.005)
    # Measured +0.010 (vocab_prior 0.3, these 8 × 256-token activation sequences); the guard was +0.15
    # on the test head before the dev protocol.
    assert small_bpb - base_bpb <= 0.03, (base_bpb, small_bpb)
    ids = small_tok(text, add_special_tokens=False).input_ids
    assert max(ids) < small.config.vocab_size and small_tok.decode(ids) == text


def test_down_proj_refit_at_40_percent_within_guard(gemma):
    """At 40% COMPACT prunes FFN channels too: the least-squares down_proj refit must beat the same
    selection without it on dev text, by a margin, and stay within a guard of what it reaches."""
    model, tokenizer = gemma
    common = dict(split=SPLIT_40, num_sequences=8, sequence_length=256, progress=False)
    fitted, fitted_tok, _ = compact_prune(model, tokenizer, str(VALID), **common)
    plain, plain_tok, _ = compact_prune(model, tokenizer, str(VALID), refit_ffn=False, **common)
    text = load_text(DEV)
    base_bpb = bits_per_byte(model, tokenizer, text, progress=False)
    fitted_delta = bits_per_byte(fitted, fitted_tok, text, progress=False) - base_bpb
    plain_delta = bits_per_byte(plain, plain_tok, text, progress=False) - base_bpb
    # Measured +0.292 refitted, +0.316 without (these 8 × 256-token activation sequences).
    assert fitted_delta <= plain_delta - 0.01 and fitted_delta <= 0.31, (fitted_delta, plain_delta)


def test_reloads_without_hf_projcomp(saved):
    path, _ = saved
    script = f"""
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
m = AutoModelForCausalLM.from_pretrained({str(path)!r})
t = AutoTokenizer.from_pretrained({str(path)!r})
assert "hf_projcomp" not in sys.modules
assert m.lm_head.weight is m.model.embed_tokens.weight and len(t) == m.config.vocab_size
text = "Robert Boulter is an English film, television and theatre actor. Zyzzyva 🙂"
assert t.decode(t(text, add_special_tokens=False).input_ids) == text
print(type(m).__name__, m.config.vocab_size, t.convert_ids_to_tokens(m.config.eos_token_id))
"""
    out = subprocess.run([sys.executable, "-c", script], env=fresh_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    name, _, eos = out.stdout.split()
    assert name == "Gemma3ForCausalLM" and eos == "<eos>"
