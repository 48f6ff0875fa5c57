"""Bad input fails early with a ValueError/TypeError that names the parameter and what is allowed."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from hf_projcomp import ProjCompConfig, ProjCompModel, get_projcomp_model
from hf_projcomp.architectures import ARCHITECTURES
from tests.tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_unsupported_architecture_names_supported_types():
    config = AutoConfig.for_model(
        "opt",
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        ffn_dim=64,
        word_embed_proj_dim=32,
    )
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match=r"'opt' is not supported") as error:
        get_projcomp_model(model, ProjCompConfig(hidden_size=16, importance="magnitude"))
    assert all(model_type in str(error.value) for model_type in ARCHITECTURES)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_size": 64}, "equals the base"),
        ({"hidden_size": 128}, r"hidden_size must be in \[1, 64\]"),
        ({"intermediate_size": 200}, r"intermediate_size must be in \[1, 96\]"),
        ({"hidden_size": 50}, r"multiple of num_attention_heads \(4\)"),
        ({"target_params": 10**9}, "must be below"),
    ],
)
def test_bad_targets_against_the_model(kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_projcomp_model(tiny_model("llama"), ProjCompConfig(**kwargs, importance="magnitude"))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"hidden_size": 0}, ValueError, "hidden_size must be a positive integer"),
        ({"intermediate_size": -8}, ValueError, "intermediate_size must be a positive integer"),
        ({"hidden_size": 32.0}, TypeError, "hidden_size must be an int"),
        ({"target_params": 1.5}, ValueError, r"must lie in \(0, 1\)"),
        ({"target_params": 0.0}, ValueError, r"must lie in \(0, 1\)"),
        ({"target_params": 0.5, "hidden_size": 32}, ValueError, "not both"),
        ({}, ValueError, "a target is required"),
        ({"hidden_size": 32, "importance": "random"}, ValueError, r"importance must be one of \('magnitude'"),
        ({"hidden_size": 32, "base_dtype": "int8"}, ValueError, "base_dtype must be None or one of"),
        ({"vocab_size": 100}, ValueError, "vocab_size is only used with importance='compact'"),
    ],
)
def test_bad_config_values(kwargs, error, message):
    with pytest.raises(error, match=message):
        ProjCompConfig(**kwargs)


def test_activation_importance_needs_calibration_data():
    # Without data the bundled text is read, which needs a tokenizer (a model built from a config has
    # no name_or_path to load one from).
    with pytest.raises(ValueError, match=r"this importance reads text: pass tokenizer="):
        get_projcomp_model(tiny_model("llama"), ProjCompConfig(hidden_size=32, importance="activation"))
    with pytest.raises(ValueError, match="calibration_data is empty"):
        get_projcomp_model(
            tiny_model("llama"), ProjCompConfig(hidden_size=32, importance="activation"), calibration_data=[]
        )
    with pytest.raises(ValueError, match="this importance reads text: pass tokenizer="):
        get_projcomp_model(
            tiny_model("llama"), ProjCompConfig(hidden_size=32, importance="activation"), calibration_data=["some text"]
        )
    with pytest.raises(TypeError, match="calibration_data must be"):
        get_projcomp_model(
            tiny_model("llama"), ProjCompConfig(hidden_size=32, importance="activation"), calibration_data=3.5
        )


def test_raw_text_given_as_one_string_says_to_pass_a_list():
    from hf_projcomp.importance.calibration import iter_calibration_texts

    # Too long for a file name: the OS refuses to stat it (it used to surface as that OSError).
    with pytest.raises(ValueError, match=r"does not exist \(pass a list of strings for raw text\)"):
        list(iter_calibration_texts("The tower is 324 metres tall. " * 200))


def test_config_must_be_a_projcomp_config():
    with pytest.raises(TypeError, match="config must be a ProjCompConfig"):
        get_projcomp_model(tiny_model("llama"), {"hidden_size": 32})


def test_adapter_on_a_base_with_different_shapes(tmp_path):
    get_projcomp_model(tiny_model("llama"), ProjCompConfig(hidden_size=32, importance="magnitude")).save_pretrained(
        tmp_path
    )
    other = tiny_model("llama", hidden_size=128)
    with pytest.raises(ValueError, match=r"different shapes \(hidden_size: adapter 64 vs model 128\)"):
        ProjCompModel.from_pretrained(other, tmp_path)
    with pytest.raises(ValueError, match="model_type: adapter 'llama' vs model 'qwen2'"):
        ProjCompModel.from_pretrained(tiny_model("qwen2"), tmp_path)
