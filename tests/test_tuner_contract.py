"""PEFT's tuner contract, each method against an independent reference: the base model's own logits, a
normal load, PEFT's own state-dict functions; what one adapter over a separate network cannot do is
refused with the alternative."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hf_projcomp import ProjCompConfig
from hf_projcomp.projection import unwrap
from tests.test_compact import model_for
from tests.tiny import MODEL_TYPES, target_sizes, tiny_model
from tests.tiny_tokenizers import tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
ADAPTER_0_2 = Path(__file__).parent / "data" / "adapter_0.2"
LOADED_FAMILIES = ["llama", "qwen2", "gemma3_text", "mixtral", "gpt2"]  # plain, biases, tied + q/k norms, MoE, Conv1D


def logits(model, input_ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def wrapped(model_type: str, seed: int = 0):
    """A projected-compression model whose adapter differs from its initial (hard-pruned) values."""
    pc = get_peft_model(tiny_model(model_type), ProjCompConfig(**target_sizes(model_type), importance="magnitude"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unwrap(pc).trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.01)
    return pc


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Per family: a base directory and a trained-looking adapter saved from it."""
    root = tmp_path_factory.mktemp("contract")
    out = {}
    for model_type in LOADED_FAMILIES:
        tiny_model(model_type).save_pretrained(root / model_type / "base")
        pc = wrapped(model_type)
        pc.save_pretrained(root / model_type / "adapter")
        out[model_type] = root / model_type
    return out


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_disable_adapter_runs_the_base_models_own_forward(model_type, input_ids):
    reference = logits(tiny_model(model_type), input_ids)  # another instance of the same base
    pc = wrapped(model_type)
    projected = logits(pc, input_ids)
    assert not torch.allclose(projected, reference[..., : projected.shape[-1]], atol=1e-3)
    with pc.disable_adapter():
        assert pc.get_model_status().enabled is False
        assert torch.equal(logits(pc, input_ids), reference)
    assert pc.get_model_status().enabled is True
    assert torch.equal(logits(pc, input_ids), projected)  # back on


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_get_base_model_and_unload_are_the_base_with_its_real_weights(model_type, input_ids):
    reference = logits(tiny_model(model_type), input_ids)
    pc = wrapped(model_type)
    assert torch.equal(logits(pc.get_base_model(), input_ids), reference)
    base = pc.unload()
    assert base is pc.get_base_model() and torch.equal(logits(base, input_ids), reference)


def test_disabled_adapter_with_a_pruned_vocabulary_reads_and_scores_its_own_ids():
    """Ids of the pruned tokenizer are the base's kept ids; logits are the base's at the kept tokens."""
    tokenizer = tiny_tokenizer("byte_fallback")
    base = model_for("gemma3_text", tokenizer)
    pc = PeftModel.from_pretrained(model_for("gemma3_text", tokenizer), ADAPTER_0_2)
    kept = unwrap(pc).selection_vocab
    ids = load_file(ADAPTER_0_2 / "expected_logits.safetensors")["input_ids"]
    with pc.disable_adapter():
        got = logits(pc, ids)
        with pytest.raises(NotImplementedError, match="prunes the vocabulary"):
            pc.generate(input_ids=ids, max_new_tokens=1)
    assert torch.equal(got, logits(base, kept[ids])[..., kept])


def test_adapters_written_by_version_0_2_load_to_the_logits_they_gave():
    """``tests/data/adapter_0.2`` (see its ``make.py``): the compressed network's norms were saved under
    ``base_model.model.*`` then; they load where they belong now, and give 0.2's logits."""
    tokenizer = tiny_tokenizer("byte_fallback")
    expected = load_file(ADAPTER_0_2 / "expected_logits.safetensors")
    pc = PeftModel.from_pretrained(model_for("gemma3_text", tokenizer), ADAPTER_0_2)
    torch.testing.assert_close(logits(pc, expected["input_ids"]), expected["logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_type", LOADED_FAMILIES)
def test_low_cpu_mem_usage_loads_what_the_normal_load_does(model_type, saved, input_ids):
    base, adapter = saved[model_type] / "base", saved[model_type] / "adapter"
    normal = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    low = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter, low_cpu_mem_usage=True)
    assert not any(p.is_meta for p in low.parameters())
    assert torch.equal(logits(low, input_ids), logits(normal, input_ids))
    assert torch.equal(logits(low, input_ids), logits(wrapped(model_type), input_ids))
    assert torch.equal(logits(low.merge_and_unload(), input_ids), logits(normal.merge_and_unload(), input_ids))


@pytest.mark.parametrize("is_trainable", [False, True])
def test_is_trainable_decides_requires_grad_as_for_lora(is_trainable, saved):
    root = saved["llama"]
    pc = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(root / "base"), root / "adapter", is_trainable=is_trainable
    )
    trainable = [n for n, p in pc.named_parameters() if p.requires_grad]
    assert pc.peft_config["default"].inference_mode is not is_trainable
    expected = [n for n, p in wrapped("llama").named_parameters() if p.requires_grad]
    assert trainable == (expected if is_trainable else [])
    assert expected and all("projections" in n or "norm" in n for n in expected)


def test_peft_state_dict_functions_round_trip(input_ids):
    source, target = wrapped("qwen2", seed=0), wrapped("qwen2", seed=1)
    assert not torch.equal(logits(source, input_ids), logits(target, input_ids))
    state = get_peft_model_state_dict(source)
    assert state and all(k.startswith("base_model.") for k in state)
    result = set_peft_model_state_dict(target, state)
    assert not result.unexpected_keys
    assert torch.equal(logits(target, input_ids), logits(source, input_ids))


def test_what_one_adapter_cannot_do_is_refused_with_the_alternative():
    pc = wrapped("llama")
    with pytest.raises(NotImplementedError, match=r"exactly one adapter.*PeftModel.from_pretrained"):
        pc.add_adapter("ref", ProjCompConfig(hidden_size=48, intermediate_size=64, importance="magnitude"))
    assert list(pc.peft_config) == ["default"]  # PEFT rolled its table back
    with pytest.raises(NotImplementedError, match=r"unload\(\)"):
        pc.base_model.delete_adapter("default")
    with pytest.raises(NotImplementedError, match=r"merge_and_unload\(\)"):
        pc.base_model.merge_adapter()
    with pytest.raises(ValueError, match="one adapter, 'default'"):
        pc.base_model.set_adapter("other")
    pc.set_adapter("default")
    pc.base_model.set_adapter("default", inference_mode=True)
    assert not any(p.requires_grad for p in pc.parameters())


def test_no_attribute_is_forwarded_implicitly():
    pc = wrapped("llama")
    tuner = pc.base_model
    assert tuner.generation_config is tuner.compressed.generation_config  # listed: the network that runs
    assert tuner.config is tuner.compressed.config
    with pytest.raises(AttributeError):
        tuner.lm_head  # noqa: B018 - neither the base's nor the compressed network's, silently
