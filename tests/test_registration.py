"""Registration with PEFT, as users meet it: whatever was imported first, in fresh processes; a PEFT
outside the tested range still imports and builds LoRA (one warning); PEFT's collision checks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from peft import get_peft_model

from hf_projcomp import ProjCompConfig, ProjCompModel, peft_integration
from tests.tiny import fresh_env, tiny_model

LOAD = """
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM
PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("base"), "adapter")
AutoPeftModelForCausalLM.from_pretrained("adapter")
"""
# What runs before the PEFT loaders: each reaches PEFT through transformers' is_peft_available() or its
# own import, which used to drop a one-shot import hook before PEFT was imported.
FIRST = {
    "trl": "import hf_projcomp\nimport trl",
    "from_pretrained": "import hf_projcomp\nfrom transformers import AutoModelForCausalLM\n"
    "AutoModelForCausalLM.from_pretrained('base')",
    "find_spec": "import hf_projcomp\nimport importlib.util\nimportlib.util.find_spec('peft')",
    "Trainer": "import hf_projcomp\nfrom transformers import Trainer",
    "trl, then hf_projcomp": "import trl\nimport hf_projcomp",
    # PEFT first imported by hf_projcomp.config itself, half-way through its own import
    "ProjCompConfig": "from hf_projcomp import ProjCompConfig",
}


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("registration")
    tiny_model("llama").save_pretrained(root / "base")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(root / "base")
    get_peft_model(base, ProjCompConfig(hidden_size=48, intermediate_size=64, importance="magnitude")).save_pretrained(
        root / "adapter"
    )
    return root


def run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=fresh_env(),
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.parametrize("first", FIRST)
def test_peft_loaders_find_the_method_whatever_was_imported_first(first, adapter_dir):
    done = run(FIRST[first] + LOAD, adapter_dir)
    assert done.returncode == 0, done.stderr[-3000:]


UNTESTED_PEFT = """
import importlib.metadata, warnings
real = importlib.metadata.version
importlib.metadata.version = lambda name: "0.99.0" if name == "peft" else real(name)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import hf_projcomp
    import peft
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    model = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    lora = peft.get_peft_model(model, peft.LoraConfig(target_modules=["q_proj", "v_proj"]))
    lora(input_ids=torch.tensor([[1, 2, 3]]))
    assert peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING["PROJCOMP"].__name__ == "ProjCompConfig"
ours = [str(w.message) for w in caught if "hf_projcomp" in str(w.message)]
assert len(ours) == 1 and "peft 0.99.0 is installed" in ours[0] and "registered anyway" in ours[0], ours
"""


def test_an_untested_peft_still_imports_builds_lora_and_warns_once(tmp_path):
    done = run(UNTESTED_PEFT, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]


def test_registration_failure_breaks_nothing_until_the_method_is_used(monkeypatch):
    import peft.mapping

    monkeypatch.delattr(peft.mapping, "PEFT_TYPE_TO_PREFIX_MAPPING")
    with pytest.warns(UserWarning, match="could not register"):
        peft_integration.register(ProjCompConfig, ProjCompModel)
    with pytest.raises(ImportError, match=r"not registered with PEFT.*PEFT_TYPE_TO_PREFIX_MAPPING"):
        ProjCompConfig(hidden_size=8)
    monkeypatch.undo()
    peft_integration.register(ProjCompConfig, ProjCompModel)  # idempotent, and clears the failure
    ProjCompConfig(hidden_size=8)


def test_peft_collision_checks_are_mirrored(monkeypatch):
    import peft.mapping as mapping

    class Other:
        pass

    monkeypatch.setitem(mapping.PEFT_TYPE_TO_CONFIG_MAPPING, "PROJCOMP", Other)
    with pytest.warns(UserWarning, match="already a PEFT method called 'PROJCOMP'"):
        peft_integration.register(ProjCompConfig, ProjCompModel)
    monkeypatch.undo()
    for table in ("PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING", "PEFT_TYPE_TO_PREFIX_MAPPING"):
        monkeypatch.delitem(getattr(mapping, table), "PROJCOMP")
    monkeypatch.setitem(mapping.PEFT_TYPE_TO_PREFIX_MAPPING, "OTHER", ProjCompModel.prefix)
    with pytest.warns(UserWarning, match="already uses the state-dict prefix 'projections'"):
        peft_integration.register(ProjCompConfig, ProjCompModel)
    monkeypatch.undo()
    peft_integration.register(ProjCompConfig, ProjCompModel)
    assert peft_integration._failure is None
