"""Hard pruning by index selection, including the vocabulary (rows gathered, special ids remapped)."""

from __future__ import annotations

import pytest
import torch

from hf_projcomp import hard_prune

from tests.tiny import TINY, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_vocabulary_only_pruning_is_exact_on_kept_tokens(model_type):
    model = tiny_model(model_type)
    kept = torch.tensor([0, 1, 2] + list(range(10, 90, 2)))  # new id -> old id
    small = hard_prune(model, range(TINY["hidden_size"]), [range(TINY["intermediate_size"])] * 2, kept)
    assert small.config.vocab_size == len(kept)
    assert small.get_input_embeddings().weight.shape[0] == len(kept)
    assert small.get_output_embeddings().weight.shape[0] == len(kept)
    old_ids = kept[torch.randint(0, len(kept), (2, 9), generator=torch.Generator().manual_seed(0))]
    new_ids = torch.searchsorted(kept, old_ids)
    with torch.no_grad():
        expected = model(input_ids=old_ids).logits[..., kept]
        got = small(input_ids=new_ids).logits
    assert torch.allclose(got, expected, atol=1e-5)


def test_special_token_ids_are_remapped():
    model = tiny_model("llama")
    model.generation_config.eos_token_id = [2, 40]
    kept = torch.tensor([0, 1, 2, 7, 40, 41])
    small = hard_prune(model, range(64), [range(96)] * 2, kept)
    assert (small.config.pad_token_id, small.config.bos_token_id, small.config.eos_token_id) == (0, 1, 2)
    assert small.generation_config.eos_token_id == [2, 4]


def test_dropping_a_special_token_is_refused():
    with pytest.raises(ValueError, match="eos_token_id 2 is not among the kept tokens"):
        hard_prune(tiny_model("llama"), range(64), [range(96)] * 2, torch.tensor([0, 1, 5, 6]))


def test_uneven_ffn_widths_are_refused():
    with pytest.raises(ValueError, match="same number of channels in every layer"):
        hard_prune(tiny_model("llama"), range(0, 64, 2), [range(10), range(12)])
