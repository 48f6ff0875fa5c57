"""Hard pruning by index selection, including the vocabulary (rows gathered, special ids remapped)."""

from __future__ import annotations

import pytest
import torch

from hf_projcomp import hard_prune
from tests.tiny import TINY, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_vocabulary_only_pruning_is_exact_on_kept_tokens(model_type):
    model = tiny_model(model_type)
    kept = torch.tensor([0, 1, 2, *list(range(10, 90, 2))])  # new id -> old id
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


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_output_keeps_the_base_dtype(model_type):
    """A bfloat16 base gives a bfloat16 model (Gemma's scale folding rounds once, from float32)."""
    base = tiny_model(model_type).to(torch.bfloat16)
    hidden, ffn, kept = (
        list(range(0, 64, 2)),
        [list(range(0, 96, 3))] * 2,
        torch.tensor([0, 1, 2, *list(range(10, 60))]),
    )
    small = hard_prune(base, hidden, ffn, kept)
    assert {p.dtype for p in small.parameters()} == {torch.bfloat16} and small.config.dtype == torch.bfloat16
    reference = hard_prune(tiny_model(model_type).to(torch.bfloat16).float(), hidden, ffn, kept)
    for (name, got), (_, want) in zip(small.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(got, want.to(torch.bfloat16)), name
    rotary = [b for n, b in small.named_buffers() if "inv_freq" in n]
    assert rotary and all(b.dtype == torch.float32 for b in rotary)  # as from_pretrained(dtype=bf16) has them
    assert {p.dtype for p in hard_prune(base, hidden, ffn, kept, dtype=torch.float32).parameters()} == {torch.float32}


def test_every_generation_config_id_is_remapped_or_dropped_with_a_warning(caplog):
    model = tiny_model("llama")
    gen = model.generation_config
    gen.eos_token_id = [2, 40, 77]
    gen.forced_bos_token_id, gen.forced_eos_token_id = 41, [40, 77]
    gen.suppress_tokens, gen.begin_suppress_tokens = [7, 8, 41], [8]
    gen.bad_words_ids = [[40, 41], [40, 8]]
    gen.sequence_bias = [[[7], 1.5], [[8, 40], -2.0]]
    kept = torch.tensor([0, 1, 2, 7, 40, 41])  # new ids 0..5; 8 and 77 are pruned
    with caplog.at_level("WARNING"):
        small = hard_prune(model, range(64), [range(96)] * 2, kept)
    new = small.generation_config
    assert new.eos_token_id == [2, 4] and new.forced_bos_token_id == 5 and new.forced_eos_token_id == [4]
    assert new.suppress_tokens == [3, 5] and new.begin_suppress_tokens is None
    assert new.bad_words_ids == [[4, 5]] and new.sequence_bias == [[[3], 1.5]]
    for field, token in (
        ("eos_token_id", 77),
        ("forced_eos_token_id", 77),
        ("suppress_tokens", 8),
        ("begin_suppress_tokens", 8),
        ("bad_words_ids", "[40, 8]"),
        ("sequence_bias", "[8, 40]"),
    ):
        assert f"generation_config.{field}: token id {token} was pruned" in caplog.text, field
    assert model.generation_config.eos_token_id == [2, 40, 77]  # the base is untouched
