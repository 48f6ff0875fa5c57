"""COMPACT's selection stages called one at a time, each against an expectation computed another way."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from hf_projcomp.architectures import ffn_size, get_arch_spec
from hf_projcomp.compact import CompactConfig, CompactSelection, compact_build, resolve_budget
from hf_projcomp.compact.budget import Split
from hf_projcomp.compact.compensation import refit_down_proj
from hf_projcomp.compact.ranking import RARE_NEXT_COUNT, character_counts, script_letters, token_texts
from hf_projcomp.compact.select import (
    Candidate,
    activation_pass,
    activation_sequences,
    candidate_vocabularies,
    common_token_mask,
    read_and_hold_out,
    score_and_pick,
    splits_to_try,
    vocabulary_ranking,
)
from hf_projcomp.evaluate import bits_per_byte
from hf_projcomp.sizing import count_target_parameters
from hf_projcomp.vocab import VocabularyPruner
from tests.test_compact import model_for
from tests.tiny_tokenizers import TRAIN, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def _ids(tokenizer, texts: list[str]) -> list[int]:
    return [i for text in texts for i in tokenizer(text, add_special_tokens=False).input_ids]


@pytest.mark.parametrize("kind", ["byte_fallback", "byte_level"])
def test_read_and_hold_out_cuts_the_stream_after_the_bos(kind):
    tokenizer = tiny_tokenizer(kind)
    vocab = len(tokenizer)
    config = CompactConfig(frequency_tokens=300, heldout_tokens=50)
    got = read_and_hold_out(tokenizer, TRAIN * 10, config, vocab, progress=False)
    bos = tokenizer.bos_token_id
    stream = ([bos] if bos is not None else []) + _ids(tokenizer, TRAIN * 10)[:350]
    assert got.bos == bos and got.counted.tolist() == stream[:-50]
    assert got.heldout_text == tokenizer.decode(stream[-50:], skip_special_tokens=True)
    want = Counter(stream[:-50])
    assert got.counts.shape == (vocab,) and got.counts.tolist() == [want[i] for i in range(vocab)]
    assert 0 < len(got.texts) < len(TRAIN * 10)  # texts past the budget are never read

    short = read_and_hold_out(tokenizer, TRAIN[:1], config, vocab, progress=False)  # under 2 × 50 tokens
    stream = ([bos] if bos is not None else []) + _ids(tokenizer, TRAIN[:1])
    assert len(stream) < 100 and short.counted.tolist() == stream[: len(stream) - len(stream) // 4]
    assert short.texts == TRAIN[:1]


def test_splits_to_try_checks_a_fixed_split_and_keeps_the_vocabulary_without_a_pruner():
    tokenizer = tiny_tokenizer("byte_fallback")
    model = model_for("llama", tokenizer)
    vocab, d_ff, hidden = model.config.vocab_size, ffn_size(model.config), model.config.hidden_size
    pruner = VocabularyPruner(tokenizer)
    fixed = splits_to_try(model, CompactConfig(split=(vocab - 40, 32)), pruner, None)
    assert fixed == [Split(vocab - 40, 32, count_target_parameters(model, hidden, 32, vocab - 40))]
    for bad in ((vocab + 1, 32), (len(pruner.required_ids) - 1, 32), (vocab, d_ff + 1)):
        with pytest.raises(ValueError, match="split must be"):
            splits_to_try(model, CompactConfig(split=bad), pruner, None)
    with pytest.raises(ValueError, match="split must be"):  # without a pruner every token is required
        splits_to_try(model, CompactConfig(split=(vocab - 40, 32)), None, None)

    config = CompactConfig(target_params=0.8)
    budget = resolve_budget(model, 0.8)
    ffn_only = splits_to_try(model, config, None, budget)
    assert [s.vocab_size for s in ffn_only] == [vocab] and ffn_only[0].parameters <= budget
    mixed = splits_to_try(model, config, pruner, budget)
    assert len(mixed) > 1 and any(s.vocab_size < vocab for s in mixed)
    with pytest.raises(ValueError, match="cannot be reached"):
        splits_to_try(model, CompactConfig(target_params=10), pruner, 10)


def test_common_token_mask_keeps_the_most_counted_tokens_of_the_smallest_vocabulary():
    counts = torch.tensor([3, 0, 9, 1, 7, 5])
    splits = [Split(6, 8, 0), Split(3, 16, 0), Split(4, 4, 0)]
    assert common_token_mask(counts, splits).tolist() == [0.0, 0.0, 1.0, 0.0, 1.0, 1.0]  # 9, 7 and 5
    assert common_token_mask(counts, splits[:1]).tolist() == [1.0] * 6


def test_activation_pass_scores_common_act2_and_predicts_after_rare_tokens():
    """Scores are Σ mask[token] · h² over the positions, from hooks of our own; the predicted mass is
    the model's next-token distribution summed where the next token is rare; no Gram without a refit."""
    tokenizer = tiny_tokenizer("byte_fallback")
    model = model_for("llama", tokenizer)
    spec = get_arch_spec(model.config)
    config = CompactConfig(num_sequences=2, sequence_length=16, heldout_tokens=16, refit_ffn=False)
    calibration = read_and_hold_out(tokenizer, TRAIN, config, model.config.vocab_size, progress=False)
    sequences = activation_sequences(calibration, config)
    bos, body = calibration.counted[0].item(), calibration.counted[1:].tolist()
    assert bos == tokenizer.bos_token_id  # every sequence starts with it, as the model saw in training
    assert [s.tolist() for s in sequences] == [[[bos, *body[i * 15 : (i + 1) * 15]]] for i in range(2)]
    counts = calibration.counts
    splits = [Split(len(tokenizer), 32, 0), Split(20, 64, 0)]  # the smallest vocabulary decides
    kept = set(torch.argsort(-counts.double(), stable=True)[:20].tolist())  # ties by id
    positions = [token in kept for seq in sequences for token in seq[0].tolist()]
    assert any(positions) and not all(positions)

    captured: list[torch.Tensor] = []
    hook = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    stats = activation_pass(model, spec, sequences, counts, splits, config, predict_mass=True, progress=False)
    hook.remove()
    assert stats.ffn_gram is None and stats.predicted_mass is not None
    want = torch.zeros(ffn_size(model.config), dtype=torch.float64)
    mass = torch.zeros(model.config.vocab_size, dtype=torch.float64)
    for seq, h in zip(sequences, captured, strict=True):
        for t, token in enumerate(seq[0].tolist()):
            if token in kept:
                want += h[0, t].double() ** 2
        with torch.no_grad():
            probs = model(input_ids=seq).logits[0].double().softmax(-1)
        for t, nxt in enumerate(seq[0, 1:].tolist()):
            if counts[nxt] <= RARE_NEXT_COUNT:
                mass += probs[t]
    torch.testing.assert_close(stats.scores.ffn[1], want, rtol=1e-5, atol=1e-8)
    assert mass.sum() > 0
    torch.testing.assert_close(stats.predicted_mass, mass, rtol=1e-4, atol=1e-7)


def test_vocabulary_ranking_orders_by_count_and_floors_script_letters():
    tokenizer = tiny_tokenizer("byte_fallback")
    vocab = len(tokenizer)
    plain = CompactConfig(vocab_prior=0, keep_script_letters=False, heldout_tokens=64)
    calibration = read_and_hold_out(tokenizer, TRAIN * 2, plain, vocab, progress=False)
    counts = calibration.counts.tolist()
    assert vocabulary_ranking(tokenizer, calibration, plain, None) == sorted(
        range(vocab), key=lambda i: (-counts[i], i)
    )

    letters = CompactConfig(vocab_prior=0, keep_script_letters=True, heldout_tokens=64)
    chars = character_counts(calibration.texts) - character_counts([calibration.heldout_text])
    floored = set(script_letters(token_texts(tokenizer), chars).tolist())
    assert any(counts[i] == 0 for i in floored)
    want = sorted(range(vocab), key=lambda i: (-max(counts[i], 1 if i in floored else 0), i))
    assert vocabulary_ranking(tokenizer, calibration, letters, None) == want


def test_score_and_pick_scores_each_candidate_as_compact_build_builds_it():
    """Each split's score is the bits per byte of the model compact_build makes from its top channels
    (by a plain argsort), refitted on the pass's Gram matrices; the lowest wins."""
    tokenizer = tiny_tokenizer("byte_fallback")
    model = model_for("llama", tokenizer)
    spec, vocab, d_ff = get_arch_spec(model.config), model.config.vocab_size, ffn_size(model.config)
    config = CompactConfig(num_sequences=2, sequence_length=32, heldout_tokens=64)
    calibration = read_and_hold_out(tokenizer, TRAIN * 4, config, vocab, progress=False)
    splits = [Split(vocab, 48, 0), Split(vocab - 80, d_ff, 0), Split(vocab - 40, 24, 0)]
    sequences = activation_sequences(calibration, config)
    stats = activation_pass(model, spec, sequences, calibration.counts, splits, config, predict_mass=False)
    assert stats.ffn_gram is not None  # the refit is on and some splits drop channels
    ranking = vocabulary_ranking(tokenizer, calibration, config, None)
    vocabularies = candidate_vocabularies(tokenizer, VocabularyPruner(tokenizer), ranking, splits, vocab)
    assert vocabularies[vocab] == (tokenizer, None) and len(vocabularies[vocab - 80][1]) <= vocab - 80
    best, results = score_and_pick(model, spec, splits, vocabularies, stats, calibration.heldout_text)

    want = {}
    for split in splits:
        small_tok, kept_ids = vocabularies[split.vocab_size]
        order = stats.scores.ffn.argsort(-1, descending=True)
        channels = [layer[: split.intermediate_size].sort().values for layer in order]
        refit = split.intermediate_size < d_ff
        down_proj = refit_down_proj(model, spec, stats.ffn_gram, channels) if refit else None
        selection = CompactSelection(config, split, {}, 0, 0, kept_ids, channels, stats.scores, small_tok, down_proj)
        small = compact_build(model, selection)
        want[len(small_tok), split.intermediate_size] = bits_per_byte(
            small, small_tok, calibration.heldout_text, progress=False
        )
    assert results == want
    assert isinstance(best, Candidate) and best.bits_per_byte == min(want.values()) == want[best.sizes]
    assert best.down_proj is not None or best.split.intermediate_size == d_ff

    alone, scored = score_and_pick(model, spec, splits[2:], vocabularies, stats, calibration.heldout_text)
    assert alone.split == splits[2] and alone.bits_per_byte != alone.bits_per_byte  # one split: NaN, no model
    assert list(scored) == [alone.sizes]
