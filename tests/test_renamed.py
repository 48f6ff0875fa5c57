"""Names renamed in 0.3 keep working for one release, with a FutureWarning naming the new one."""

import importlib

import pytest

from tests.tiny import tiny_model

RENAMED = [
    ("hf_projcomp.texts", "EVALUATION", "TEST_HEAD"),
    ("hf_projcomp.hard_pruning", "select", "gather_weight"),
]


@pytest.mark.parametrize(("module", "old", "new"), RENAMED)
def test_a_renamed_module_attribute_warns_and_is_the_new_one(module, old, new):
    mod = importlib.import_module(module)
    with pytest.warns(FutureWarning, match=new):
        assert getattr(mod, old) is getattr(mod, new)
    assert old not in mod.__all__ and new in mod.__all__
    assert not hasattr(mod, "no_such_name")  # other names still raise AttributeError


def test_the_rank_helpers_keep_their_old_module():
    from hf_projcomp import ranks
    from hf_projcomp.distributed import ranks as old

    assert old.on_rank0_then_broadcast is ranks.on_rank0_then_broadcast


def test_source_model_is_the_base_with_a_warning():
    from hf_projcomp import ProjCompConfig, get_projcomp_model

    base = tiny_model("llama")
    config = ProjCompConfig(hidden_size=48, intermediate_size=64, importance="magnitude")
    pc = get_projcomp_model(base, config, progress=False).base_model
    with pytest.warns(FutureWarning, match=r"\.model"):
        assert pc.source_model is base is pc.model
    assert pc.compressed.config.hidden_size == 48 and pc.model.config.hidden_size == base.config.hidden_size != 48
