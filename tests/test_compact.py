"""COMPACT on tiny models with tiny trained tokenizers of both supported kinds."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from collections import Counter

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

import hf_projcomp.compact.select as select_module
from hf_projcomp.architectures import FFN, ffn_size, get_arch_spec
from hf_projcomp.compact import (
    CompactConfig,
    CompactSelection,
    candidate_splits,
    compact_build,
    compact_prune,
    compact_select,
    resolve_budget,
)
from hf_projcomp.compact.compensation import REFIT_RIDGE, refit_columns
from hf_projcomp.compact.ranking import (
    RANK_PRIOR_OFFSET,
    RARE_NEXT_COUNT,
    alphabet_mask,
    character_counts,
    frequent_characters,
    rank_prior,
    script_letters,
    token_ranking,
    token_texts,
)
from hf_projcomp.sizing import count_target_parameters
from hf_projcomp.vocab import required_token_ids
from tests.tiny import fresh_env, tiny_config
from tests.tiny_tokenizers import HELD_OUT, TRAIN, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [
    ("llama", "byte_fallback"),
    ("gemma3_text", "byte_fallback"),
    ("qwen2", "byte_level"),
    ("phi", "byte_level"),
    ("gpt_neox", "byte_level"),
    ("gpt2", "byte_level"),
    ("mixtral", "byte_fallback"),
    ("qwen3_moe", "byte_level"),
]


def model_for(model_type: str, tokenizer) -> torch.nn.Module:
    torch.manual_seed(0)
    ids = {
        k: tokenizer.convert_tokens_to_ids(getattr(tokenizer, k.replace("_id", "")))
        for k in ("bos_token_id", "eos_token_id", "pad_token_id")
        if getattr(tokenizer, k.replace("_id", ""))
    }
    config = tiny_config(model_type, **{"vocab_size": len(tokenizer), "pad_token_id": None, **ids})
    return AutoModelForCausalLM.from_config(config).eval()


CALIBRATION_CONFIG = dict(num_sequences=4, sequence_length=64, heldout_tokens=64)
CALIBRATION = dict(**CALIBRATION_CONFIG, progress=False)


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-{k}" for m, k in CASES])
def pruned(request):
    """Both sides pruned at a fixed split: 100 tokens fewer, d_ff 96 -> 64 (no down_proj refit: these
    tests check the selection itself; the refit has its own below)."""
    model_type, kind = request.param
    tokenizer = tiny_tokenizer(kind)
    model = model_for(model_type, tokenizer)
    small, small_tok, result = compact_prune(
        model, tokenizer, TRAIN * 4, split=(len(tokenizer) - 100, 64), refit_ffn=False, **CALIBRATION
    )
    assert len(small_tok) <= len(tokenizer) - 100
    return model, tokenizer, small, small_tok, result


@pytest.mark.parametrize("model_type, kind", CASES)
def test_budget_solver_meets_the_target_within_one_percent(model_type, kind):
    tokenizer = tiny_tokenizer(kind)
    model = model_for(model_type, tokenizer)
    budget = resolve_budget(model, 0.8)
    small, small_tok, result = compact_prune(model, tokenizer, TRAIN * 4, target_params=0.8, **CALIBRATION)
    # Within 1%, or one step of d_ff where the family's widths come in multiples (an MoE's 8 channels
    # are several percent of a tiny model).
    step = get_arch_spec(model.config).width_multiple
    hidden = model.config.hidden_size
    per_step = count_target_parameters(model, hidden, 1 + step) - count_target_parameters(model, hidden, 1)
    assert abs(small.num_parameters() - budget) <= max(0.01 * budget, per_step if step > 1 else 0)
    assert type(small) is type(model) and small.config.vocab_size == len(small_tok)
    # The tokenizer keeps the longest ranked prefix whose merge closure fits the split's vocabulary,
    # so the model may come out a few rows under the split, never over the budget.
    inter = result.split.intermediate_size
    assert ffn_size(small.config) == inter
    assert small.num_parameters() == count_target_parameters(
        model, model.config.hidden_size, inter, small.config.vocab_size
    )
    assert small.num_parameters() <= result.split.parameters <= budget
    assert 0 <= result.split.vocab_size - small.config.vocab_size <= 8
    assert len(result.candidates) >= 2  # the split was chosen among candidates, not assumed
    assert result.candidates[small.config.vocab_size, inter] == min(result.candidates.values())


def test_every_candidate_split_meets_the_budget():
    tokenizer = tiny_tokenizer("byte_fallback")
    model = model_for("llama", tokenizer)
    budget = resolve_budget(model, 0.8)
    splits = candidate_splits(model, budget, 300, (1.0, 0.9, 0.8))
    assert len(splits) >= 3
    for split in splits:
        assert abs(split.parameters - budget) / budget < 0.01
        assert split.vocab_size <= model.config.vocab_size and split.intermediate_size <= model.config.intermediate_size


def test_tokenizer_round_trips_and_stays_in_bounds(pruned):
    model, _, small, small_tok, _ = pruned
    assert small.config.vocab_size == len(small_tok) < model.config.vocab_size
    for text in HELD_OUT + TRAIN:
        ids = small_tok.encode(text, add_special_tokens=False)
        assert small_tok.decode(ids) == text
        assert max(ids) < small.config.vocab_size
    assert small.get_input_embeddings().weight.shape[0] == small.config.vocab_size


def test_special_tokens_are_remapped(pruned):
    _, tokenizer, small, small_tok, _ = pruned
    assert small_tok.convert_ids_to_tokens(small.config.eos_token_id) == tokenizer.eos_token
    assert small_tok.convert_ids_to_tokens(small.config.bos_token_id) == tokenizer.bos_token
    assert small.generation_config.eos_token_id == small.config.eos_token_id


def test_kept_rows_and_channels_are_the_base_ones(pruned):
    """Every embedding and LM-head row is the base row of the token it names; every FFN weight is the
    base weight at the kept channels; nothing else changed."""
    model, tokenizer, small, small_tok, result = pruned
    kept = result.kept_token_ids
    assert small_tok.convert_ids_to_tokens(list(range(len(small_tok)))) == tokenizer.convert_ids_to_tokens(
        kept.tolist()
    )
    assert torch.equal(small.get_input_embeddings().weight, model.get_input_embeddings().weight[kept])
    assert torch.equal(small.get_output_embeddings().weight, model.get_output_embeddings().weight[kept])
    base = dict(model.named_parameters())
    spec = get_arch_spec(model.config)
    assert ffn_size(small.config) == 64
    for name, param in small.named_parameters():
        if name.startswith((spec.embed, spec.lm_head)):
            continue
        layer, path = name.removeprefix(f"{spec.layers}.").split(".", 1)
        lin = next((lin for lin in spec.linears if path.startswith(lin.path)), None)
        want = base[name]
        channels = result.intermediate_indices[int(layer)] if lin else None
        if lin and name.endswith(".bias"):  # a bias goes with its linear's output rows
            if lin.out_dim == FFN:
                want = at_channels(want.unsqueeze(-1), channels, False, lin.out_chunks).squeeze(-1)
        elif lin and FFN in (lin.in_dim, lin.out_dim):
            torch_layout = want.mT if lin.transposed else want  # GPT-2's Conv1D stores in × out
            want = at_channels(torch_layout, channels, lin.in_dim == FFN, lin.out_chunks)
            want = want.mT if lin.transposed else want
        assert torch.equal(param, want), name


def at_channels(weight: torch.Tensor, channels: torch.Tensor, columns: bool, chunks: int) -> torch.Tensor:
    """``weight`` at the kept d_ff ``channels``: its columns, or the rows of each fused chunk; one row of
    channels per expert when the experts are stacked."""
    if channels.dim() > 1:
        return torch.stack([at_channels(w, c, columns, chunks) for w, c in zip(weight, channels, strict=True)])
    if columns:
        return weight[:, channels]
    return weight.reshape(chunks, -1, weight.shape[-1])[:, channels].reshape(-1, weight.shape[-1])


def test_reloads_in_fresh_process_without_hf_projcomp(pruned, tmp_path):
    _, _, small, small_tok, _ = pruned
    small.save_pretrained(tmp_path)
    small_tok.save_pretrained(tmp_path)
    text = HELD_OUT[1]
    with torch.no_grad():
        expected = small(**small_tok(text, return_tensors="pt")).logits
    script = f"""
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(tmp_path)!r})
m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}).eval()
assert "hf_projcomp" not in sys.modules
with torch.no_grad():
    torch.save(m(**tok({text!r}, return_tensors="pt")).logits, {str(tmp_path / "logits.pt")!r})
"""
    out = subprocess.run([sys.executable, "-c", script], env=fresh_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert torch.allclose(torch.load(tmp_path / "logits.pt"), expected, atol=1e-5)


def test_bad_input():
    tokenizer = tiny_tokenizer("byte_fallback")
    model = model_for("llama", tokenizer)
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\)"):
        compact_prune(model, tokenizer, TRAIN, target_params=1.5, progress=False)
    with pytest.raises(ValueError, match="must be below the model's"):
        compact_prune(model, tokenizer, TRAIN, target_params=10**9, progress=False)
    with pytest.raises(ValueError, match=r"cannot be reached.*required tokens"):
        compact_prune(model, tokenizer, TRAIN, target_params=0.05, progress=False)
    with pytest.raises(TypeError, match=r"ffn_importance.*CompactConfig's fields: target_params, split"):
        compact_prune(model, tokenizer, TRAIN, ffn_importance="random", progress=False)
    with pytest.raises(TypeError, match=r"config must be a CompactConfig.*target_params="):
        compact_prune(model, tokenizer, TRAIN, 0.5, progress=False)
    with pytest.raises(ValueError, match="calibration_data is empty"):
        compact_prune(model, tokenizer, ["", "  "], target_params=0.6, progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        compact_prune(model, tokenizer, "/nonexistent/file.txt", target_params=0.6, progress=False)
    small_model = model_for("llama", tokenizer)
    small_model.resize_token_embeddings(100)
    with pytest.raises(ValueError, match="pass the tokenizer that belongs to this model"):
        compact_prune(small_model, tokenizer, TRAIN, target_params=0.6, progress=False)


def test_special_tokens_the_config_contradicts_are_reported_before_pruning(caplog):
    """tokenizer.pad_token = eos_token with the config still naming another pad token: save_compressed
    refuses the result, so selection says so up front."""
    tokenizer = tiny_tokenizer("byte_fallback")
    model = model_for("llama", tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.bos_token_id
    with caplog.at_level(logging.WARNING, logger="hf_projcomp.compact.select"):
        compact_select(model, tokenizer, TRAIN * 4, split=(len(tokenizer) - 100, 48), **CALIBRATION)
    assert "config.pad_token_id" in caplog.text and "save_compressed will refuse it" in caplog.text
    caplog.clear()
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    with caplog.at_level(logging.WARNING, logger="hf_projcomp.compact.select"):
        compact_select(model, tokenizer, TRAIN * 4, split=(len(tokenizer) - 100, 48), **CALIBRATION)
    assert "save_compressed will refuse" not in caplog.text


def test_unsupported_tokenizer_prunes_ffn_only(caplog):
    backend = Tokenizer(
        models.WordLevel(
            {
                "[UNK]": 0,
                "[BOS]": 1,
                "[EOS]": 2,
                **{w: i + 3 for i, w in enumerate(sorted({w for t in TRAIN for w in t.split()}))},
            },
            unk_token="[UNK]",
        )
    )
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )
    model = model_for("llama", tokenizer)
    small, small_tok, _ = compact_prune(
        model,
        tokenizer,
        TRAIN * 4,
        target_params=0.8,
        num_sequences=2,
        sequence_length=32,
        heldout_tokens=32,
        progress=False,
    )
    assert small_tok is tokenizer and small.config.vocab_size == model.config.vocab_size
    assert small.config.intermediate_size < model.config.intermediate_size
    assert "pruning FFN channels only" in caplog.text


@pytest.mark.parametrize("model_type", ["gemma3_text", "phi"])  # tied head; untied head with a bias
def test_compact_importance_initialises_the_projected_model(tmp_path, model_type):
    from hf_projcomp import ProjCompConfig, ProjCompModel, get_projcomp_model, hard_prune

    tokenizer = tiny_tokenizer("byte_fallback")
    model = model_for(model_type, tokenizer)
    config = ProjCompConfig(hidden_size=48, intermediate_size=64, vocab_size=450, importance="compact")
    with pytest.raises(ValueError, match="pass tokenizer="):  # none given, none loadable from the model
        get_projcomp_model(model, config, calibration_data=TRAIN)
    pc = get_projcomp_model(model, config, calibration_data=TRAIN * 4, tokenizer=tokenizer, progress=False)
    cfg, sel = pc.projcomp_config, pc.selection()
    assert len(sel.vocab) == len(pc.tokenizer) <= 450 and cfg.vocab_size == len(pc.tokenizer)
    ids = pc.tokenizer(HELD_OUT[3], return_tensors="pt").input_ids
    reference = hard_prune(model, sel.hidden, sel.ffn, sel.vocab)
    with torch.no_grad():
        assert torch.allclose(pc(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5)
    pc.save_pretrained(tmp_path)  # PEFT's save, and the pruned tokenizer beside it
    assert AutoTokenizer.from_pretrained(tmp_path).get_vocab() == pc.tokenizer.get_vocab()
    reloaded = ProjCompModel.from_pretrained(model_for(model_type, tokenizer), tmp_path)
    assert reloaded.tokenizer.get_vocab() == pc.tokenizer.get_vocab()
    assert torch.equal(reloaded.selection().vocab, sel.vocab)
    merged = reloaded.merge_and_unload()
    assert merged.config.vocab_size == len(pc.tokenizer) and merged.config.hidden_size == 48
    tied = merged.config.tie_word_embeddings
    assert (merged.lm_head.weight is merged.model.embed_tokens.weight) == tied
    if merged.lm_head.bias is not None:  # Phi-2's head bias: the kept tokens' entries
        assert torch.equal(merged.lm_head.bias, model.lm_head.bias[sel.vocab])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5)


@pytest.mark.parametrize("kind", ["byte_fallback", "byte_level"])
def test_model_prior_only_ranks_tokens_in_the_calibration_alphabet(kind):
    tok = tiny_tokenizer(kind)
    mask = alphabet_mask(token_texts(tok), character_counts(["the lobster"]), len(tok) + 3)
    assert mask.shape == (len(tok) + 3,) and not mask[len(tok) :].any()
    for word, inside in (("the", True), ("lobster", True), ("Atlantic", False), ("century", False)):
        ids = tok(" " + word, add_special_tokens=False).input_ids
        assert bool(mask[ids].all()) == inside, word
    # Unseen tokens: the prior ranks the alphabet's tokens first, whatever mass the others get.
    counts = torch.zeros(len(mask), dtype=torch.long)
    mass = torch.rand(len(mask), generator=torch.Generator().manual_seed(0))
    ranking = token_ranking(counts, mass, in_alphabet=mask)
    inside = int(mask.sum())
    assert mask[ranking[:inside]].all()
    assert torch.equal(ranking[:inside], torch.sort(-mass * mask, stable=True).indices[:inside])


@pytest.mark.parametrize("kind", ["byte_fallback", "byte_level"])
def test_script_letters_are_the_single_letter_tokens_of_the_calibration_scripts(kind):
    tok = tiny_tokenizer(kind)
    pieces = token_texts(tok)
    ids = script_letters(pieces, character_counts(["the lobster"]))
    letters = {i for i, piece in enumerate(pieces) if len(piece) == 1 and piece.isalpha()}
    assert set(ids.tolist()) == letters  # every letter the tiny tokenizers hold is Latin
    assert {"a", "z", "T"} <= {pieces[i] for i in ids} and " " not in {pieces[i] for i in ids}
    if kind == "byte_fallback":
        assert "é" in {pieces[i] for i in ids}


def test_script_letters_skip_scripts_rare_in_calibration():
    pieces = ["a", "é", "ab", "α", "ж", "1", " ", "\ufffd", "Ω", "日"]
    assert script_letters(pieces, Counter("abc" * 400 + "α日")).tolist() == [0, 1]
    assert script_letters(pieces, Counter("abc" + "α日")).tolist() == [0, 1, 3, 8, 9]
    assert script_letters(pieces, Counter("123 ,.")).tolist() == []


def test_seen_once_floor_is_script_letters_plus_frequent_characters(monkeypatch):
    """compact_prune ranks the calibration scripts' letters as if seen once by default, adds the
    tokenizer's first single-character tokens with keep_characters, and can switch both off."""
    tokenizer = tiny_tokenizer("byte_fallback")
    raw = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    singles = [i for i, piece in enumerate(raw) if len(piece) == 1]
    assert "é" in raw and frequent_characters(tokenizer, 3).tolist() == singles[:3]
    assert frequent_characters(tokenizer, 10**6).tolist() == singles
    model = model_for("llama", tokenizer)
    split = (len(tokenizer) - 40, model.config.intermediate_size)
    texts = [t.replace("é", "e") for t in TRAIN * 4]
    letters = set(script_letters(token_texts(tokenizer), character_counts(texts)).tolist())
    seen: list = []
    real = select_module.token_ranking
    # The final ranking is the call given seen_once (the common-act² mask ranks counts alone).
    monkeypatch.setattr(
        select_module,
        "token_ranking",
        lambda *a, **k: (seen.append(k["seen_once"]) if "seen_once" in k else None) or real(*a, **k),
    )
    compact_prune(model, tokenizer, texts, split=split, **CALIBRATION)
    compact_prune(model, tokenizer, texts, split=split, keep_characters=1000, **CALIBRATION)
    compact_prune(model, tokenizer, texts, split=split, keep_script_letters=False, **CALIBRATION)
    by_default, with_characters, off = seen
    assert set(by_default.tolist()) == letters and tokenizer.convert_tokens_to_ids("é") in letters
    assert sorted(with_characters.tolist()) == sorted(letters | set(singles)) and off is None
    with pytest.raises(ValueError, match="keep_characters"):
        compact_prune(model, tokenizer, texts, split=split, keep_characters=-1, **CALIBRATION)
    with pytest.raises(TypeError, match="keep_script_letters"):
        compact_prune(model, tokenizer, texts, split=split, keep_script_letters="yes", **CALIBRATION)


def test_rank_prior_is_zipf_over_the_id_order_of_the_calibration_scripts():
    pieces = ["a", "日", " the", "()", "ж", "b"]
    prior = rank_prior(pieces, Counter("the lobster" * 100 + "ж"), vocab_size=8)
    allowed = [0, 2, 3, 5]  # Latin or no letter; CJK absent and Cyrillic below SCRIPT_MIN_SHARE
    expected = torch.zeros(8, dtype=torch.float64)
    expected[allowed] = 1.0 / (torch.arange(4, dtype=torch.float64) + RANK_PRIOR_OFFSET)
    torch.testing.assert_close(prior, expected / expected.sum())
    # Weighted into the ranking, it orders tokens the counts and the model never saw by id.
    counts = torch.tensor([0, 0, 5, 0, 0, 0, 0, 0])
    assert token_ranking(counts, rank_prior=prior, rank_prior_weight=1.0).tolist()[:5] == [2, 0, 3, 5, 1]
    assert token_ranking(counts, rank_prior=prior, rank_prior_weight=0.0).tolist()[:2] == [2, 0]


def test_vocab_prior_keeps_frequent_tokens_the_calibration_never_shows():
    """With little calibration text, the tokenizer's order (its lowest ids) fills the vocabulary the
    counts leave open, where the model's predicted mass chose before (measured on Gemma-3 in
    benchmarks/results/compact_gemma.md)."""
    tokenizer = tiny_tokenizer("byte_level")
    model = model_for("llama", tokenizer)
    texts = TRAIN[:2]  # each token seen a few times at most: the predicted mass ranks the rest
    required = set(required_token_ids(tokenizer))
    counted = set(tokenizer(" ".join(texts)).input_ids) - required
    lowest = [i for i in range(len(tokenizer)) if i not in required | counted][:60]
    split = (len(required) + len(counted) + 60, model.config.intermediate_size)  # room for about 60 more
    kept = {}
    for weight in (0.0, 100.0):
        *_, result = compact_prune(model, tokenizer, texts, split=split, vocab_prior=weight, **CALIBRATION)
        kept[weight] = len(set(lowest) & set(result.kept_token_ids.tolist()))
    assert kept[100.0] == 60 and kept[0.0] <= 45, kept  # measured: 60 and 38
    for bad in (-1, "1", True, float("nan")):
        with pytest.raises(ValueError, match="vocab_prior"):
            compact_prune(model, tokenizer, texts, split=split, vocab_prior=bad, **CALIBRATION)


def test_held_out_tail_reaches_no_statistic(monkeypatch):
    """The tail that judges the candidate splits is outside the activation pass and the calibration
    alphabet: a marker character only the tail holds is never seen by either."""
    tokenizer = tiny_tokenizer("byte_fallback")
    model = model_for("llama", tokenizer)
    texts = [*TRAIN[:2], "ʘ ʘ ʘ and the lobster"]  # shorter than the activation pass wants, which read the tail
    batches, alphabets = [], []
    real_statistics, real_letters = select_module.activation_statistics, select_module.script_letters
    monkeypatch.setattr(
        select_module, "activation_statistics", lambda m, s, b, **k: batches.extend(b) or real_statistics(m, s, b, **k)
    )
    monkeypatch.setattr(select_module, "script_letters", lambda p, c: alphabets.append(c) or real_letters(p, c))
    compact_prune(
        model,
        tokenizer,
        texts,
        split=(len(tokenizer) - 40, 64),
        num_sequences=64,
        sequence_length=8,
        heldout_tokens=16,
        progress=False,
    )
    seen = tokenizer.decode(torch.cat([b["input_ids"].flatten() for b in batches]))
    assert "ʘ" in " ".join(texts) and "ʘ" not in seen and seen.strip()
    assert alphabets and "ʘ" not in alphabets[0] and "e" in alphabets[0]


def test_model_prior_counts_positions_whose_next_token_is_rare(monkeypatch):
    """The predicted mass comes from positions followed by a token seen at most RARE_NEXT_COUNT
    times in calibration: there the model spreads mass over plausible unseen alternatives."""
    tokenizer = tiny_tokenizer("byte_fallback")
    model = model_for("llama", tokenizer)
    texts = TRAIN * 4
    weights: list = []
    real = select_module.activation_statistics
    monkeypatch.setattr(
        select_module, "activation_statistics", lambda *a, **k: weights.append(k["mass_weight"]) or real(*a, **k)
    )
    compact_prune(model, tokenizer, texts, split=(len(tokenizer) - 40, model.config.intermediate_size), **CALIBRATION)
    rare = weights[0](torch.arange(len(tokenizer)))
    counts = Counter(tokenizer(" ".join(texts), add_special_tokens=False).input_ids)
    common = [i for i, n in counts.items() if n > 2 * RARE_NEXT_COUNT]
    unseen = [i for i in range(len(tokenizer)) if i not in counts]
    assert common and unseen and rare.dtype == torch.bool
    assert not rare[common].any() and rare[unseen].all()


def test_seen_once_floor_ranks_unseen_characters_with_hapaxes():
    counts = torch.tensor([5, 1, 0, 0, 0])
    mass = torch.tensor([0.0, 0.0, 0.0, 1e-9, 1.0 - 1e-9])
    # Scores: counted 5/6 and 1/6; the prior alone gives token 4 0.1 and token 3 1e-10.
    assert token_ranking(counts, mass, prior_weight=0.1).tolist() == [0, 1, 4, 3, 2]
    # Floored to 1/6, tokens 2 and 3 tie with the hapax (ties by id) and pass the prior-only token.
    assert token_ranking(counts, mass, prior_weight=0.1, seen_once=torch.tensor([2, 3])).tolist() == [0, 1, 2, 3, 4]


def test_bfloat16_model_prunes_to_bfloat16():
    tokenizer = tiny_tokenizer("byte_fallback")
    model = model_for("gemma3_text", tokenizer).to(torch.bfloat16)
    small, _, _ = compact_prune(model, tokenizer, TRAIN * 4, target_params=0.8, **CALIBRATION)
    assert {p.dtype for p in small.parameters()} == {torch.bfloat16} and small.config.dtype == torch.bfloat16
    small32, _, _ = compact_prune(model, tokenizer, TRAIN * 4, target_params=0.8, dtype=torch.float32, **CALIBRATION)
    assert {p.dtype for p in small32.parameters()} == {torch.float32}


def test_a_stream_is_read_only_as_far_as_needed():
    """A streamed IterableDataset (from_generator without features, so no column names) is read
    only up to the token budget, and gives the same result as the texts it was read from."""
    from datasets import IterableDataset

    tokenizer = tiny_tokenizer("byte_level")
    model = model_for("qwen2", tokenizer)
    served: list[int] = []

    def rows():
        for i in range(10_000):  # far more text than the budget below
            served.append(i)
            yield {"text": TRAIN[i % len(TRAIN)], "id": i}

    stream = IterableDataset.from_generator(rows)
    assert stream.column_names is None
    kwargs = dict(split=(len(tokenizer) - 60, 64), frequency_tokens=1500, **CALIBRATION)
    _small, _small_tok, result = compact_prune(model, tokenizer, stream, **kwargs)
    assert 0 < len(served) < 100
    read = [TRAIN[i % len(TRAIN)] for i in range(len(served))]
    _again, _again_tok, again_result = compact_prune(model, tokenizer, read, **kwargs)
    assert result.frequency_tokens == again_result.frequency_tokens
    assert torch.equal(result.kept_token_ids, again_result.kept_token_ids)
    with pytest.raises(ValueError, match="rows have no 'text' column"):
        compact_prune(model, tokenizer, IterableDataset.from_generator(lambda: iter([{"body": "x"}])), **kwargs)


def test_refit_columns_is_the_least_squares_fit():
    """On the Gram matrix of X, the refitted kept columns are lstsq(X_S, X Wᵀ): the best the kept
    channels can do, clearly better than keeping their base values when channels correlate."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 24, generator=g, dtype=torch.float64) @ torch.randn(24, 24, generator=g, dtype=torch.float64)
    w = torch.randn(8, 24, generator=g, dtype=torch.float64)
    kept = torch.tensor([0, 3, 5, 6, 10, 11, 17, 20])
    fit = refit_columns(w, x.T @ x, kept, ridge=0.0)
    torch.testing.assert_close(fit, torch.linalg.lstsq(x[:, kept], x @ w.T).solution.T, rtol=1e-8, atol=1e-8)
    error = (x[:, kept] @ fit.T - x @ w.T).norm()
    assert error < 0.9 * (x[:, kept] @ w[:, kept].T - x @ w.T).norm()
    damped = refit_columns(w, x.T @ x, kept, ridge=REFIT_RIDGE)
    assert error <= (x[:, kept] @ damped.T - x @ w.T).norm() < 1.01 * error  # the default ridge costs < 1%
    torch.testing.assert_close(refit_columns(w, x.T @ x, torch.arange(24), ridge=0.0), w)
    torch.testing.assert_close(refit_columns(w, x.T @ x, kept, ridge=1e9), w[:, kept], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="ridge"):
        refit_columns(w, x.T @ x, kept, ridge=-1.0)


@pytest.mark.parametrize("model_type, kind", [("llama", "byte_fallback"), ("gpt2", "byte_level")])
def test_refit_ffn_refits_down_proj_on_the_calibration_gram(model_type, kind, monkeypatch):
    """compact_prune's refit: the same selection as without it; only down_proj's kept columns change,
    to refit_columns on a Gram matrix whose diagonal is the common act² score (the same positions and
    weights); GPT-2's transposed Conv1D included."""
    tokenizer = tiny_tokenizer(kind)
    model = model_for(model_type, tokenizer)
    grams = []
    real = select_module.refit_down_proj
    monkeypatch.setattr(select_module, "refit_down_proj", lambda *a, **k: (grams.append(a[2]), real(*a, **k))[1])
    kwargs = dict(split=(len(tokenizer) - 100, 48), **CALIBRATION)
    plain, _, plain_result = compact_prune(model, tokenizer, TRAIN * 4, refit_ffn=False, **kwargs)
    assert not grams
    fitted, _, result = compact_prune(model, tokenizer, TRAIN * 4, **kwargs)
    assert len(grams) == 1
    spec = get_arch_spec(model.config)
    transposed = model_type == "gpt2"
    for i, (gram, channels) in enumerate(zip(grams[0], result.intermediate_indices, strict=True)):
        assert torch.equal(channels, plain_result.intermediate_indices[i])
        torch.testing.assert_close(gram.diagonal().double(), result.scores.ffn[i], rtol=1e-4, atol=1e-6)
        base_w = model.get_submodule(spec.layers)[i].get_submodule(spec.ffn_down).weight
        base_w = base_w.mT if transposed else base_w
        want = refit_columns(base_w, gram, channels).float()
        got = fitted.get_submodule(spec.layers)[i].get_submodule(spec.ffn_down).weight
        torch.testing.assert_close(got.mT if transposed else got, want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(want, base_w[:, channels])
    down = f".{spec.ffn_down}.weight"
    fitted_params = dict(fitted.named_parameters())
    for name, param in plain.named_parameters():
        if not name.endswith(down):
            assert torch.equal(param, fitted_params[name]), name
    with pytest.raises(TypeError, match="refit_ffn"):
        compact_prune(model, tokenizer, TRAIN, refit_ffn=1, **kwargs)


def test_compact_prune_is_select_then_build():
    """compact_prune = compact_select + compact_build, from a CompactConfig or keyword overrides of it;
    the selection carries the refitted down_proj; another channel choice drops it."""
    tokenizer = tiny_tokenizer("byte_fallback")
    model = model_for("llama", tokenizer)
    config = CompactConfig(split=(len(tokenizer) - 100, 48), **CALIBRATION_CONFIG)
    small, small_tok, selection = compact_prune(model, tokenizer, TRAIN * 4, config, progress=False)
    again = compact_select(model, tokenizer, TRAIN * 4, progress=False, **config.to_dict())
    assert again.config == selection.config == CompactConfig.from_dict(config.to_dict())
    built = compact_build(model, again, dtype=torch.bfloat16)
    assert built.dtype == torch.bfloat16 and again.tokenizer.get_vocab() == small_tok.get_vocab()
    for (name, a), b in zip(small.named_parameters(), built.parameters(), strict=True):
        torch.testing.assert_close(a.to(b.dtype), b, msg=name)
    spec = get_arch_spec(model.config)
    downs = [layer.get_submodule(spec.ffn_down).weight for layer in small.get_submodule(spec.layers)]
    assert selection.down_proj is not None and all(
        torch.equal(a, b) for a, b in zip(downs, selection.down_proj, strict=True)
    )
    base_downs = [layer.get_submodule(spec.ffn_down).weight for layer in model.get_submodule(spec.layers)]
    assert not torch.allclose(downs[0], base_downs[0][:, selection.intermediate_indices[0]])
    plain = compact_select(model, tokenizer, TRAIN * 4, config, refit_ffn=False, progress=False)
    assert plain.down_proj is None
    lowest = [c[:48].sort().values for c in plain.scores.ffn.argsort(-1)]
    other = dataclasses.replace(selection, intermediate_indices=lowest, down_proj=None)  # base down_proj values
    assert not torch.equal(other.intermediate_indices[0], selection.intermediate_indices[0])
    assert other.down_proj is None and isinstance(other, CompactSelection)
    rebuilt = compact_build(model, other)
    torch.testing.assert_close(
        rebuilt.get_submodule(spec.layers)[0].get_submodule(spec.ffn_down).weight,
        base_downs[0][:, other.intermediate_indices[0]],
    )
    with pytest.raises(ValueError, match=r"down_proj\[0\] is .* belongs to other d_ff channels"):
        compact_build(model, dataclasses.replace(selection, intermediate_indices=[torch.arange(40)] * len(downs)))
    with pytest.raises(TypeError, match="selection must be a CompactSelection"):
        compact_build(model, config)


def test_refit_keeps_float32_precision_for_a_bf16_base():
    """The refit is solved in float64 and kept in float32: a bf16 base built in float32 gets those
    values, not bf16-rounded ones; built in bf16 it is rounded once."""
    tokenizer = tiny_tokenizer("byte_fallback")
    model = model_for("llama", tokenizer).to(torch.bfloat16)
    selection = compact_select(model, tokenizer, TRAIN * 4, split=(len(tokenizer) - 100, 48), **CALIBRATION)
    spec = get_arch_spec(model.config)
    assert all(w.dtype == torch.float32 for w in selection.down_proj)
    assert not torch.equal(selection.down_proj[0], selection.down_proj[0].bfloat16().float())  # finer than bf16
    for dtype in (torch.float32, torch.bfloat16):
        built = compact_build(model, selection, dtype=dtype)
        for layer, weight in zip(built.get_submodule(spec.layers), selection.down_proj, strict=True):
            assert torch.equal(layer.get_submodule(spec.ffn_down).weight, weight.to(dtype))


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("split", (10, 0), ValueError),
        ("split", (10,), ValueError),
        ("target_params", "half", TypeError),
        ("num_sequences", 0, ValueError),
        ("sequence_length", 1, ValueError),
        ("heldout_tokens", 1.5, ValueError),
        ("prior_weight", -1, ValueError),
        ("vocab_prior", True, ValueError),
        ("keep_characters", -1, ValueError),
        ("refit_ffn", 1, TypeError),
        ("prune_vocabulary", "no", TypeError),
        ("ffn_fractions", (1.5,), ValueError),
        ("ffn_fractions", (), ValueError),
        ("text_column", 3, TypeError),
    ],
)
def test_compact_config_names_the_bad_field(field, value, error):
    with pytest.raises(error, match=field):
        CompactConfig(**{field: value})


def test_compact_config_round_trips_and_refuses_unknown_or_inconsistent_fields():
    config = CompactConfig(split=(100, 32), ffn_fractions=[1.0, 0.5], refit_ffn=False)
    assert config.ffn_fractions == (1.0, 0.5) and CompactConfig.from_dict(config.to_dict()) == config
    assert json.loads(json.dumps(config.to_dict()))["split"] == [100, 32]
    with pytest.raises(ValueError, match=r"unknown CompactConfig fields \['ffn_importance'\]"):
        CompactConfig.from_dict({"ffn_importance": "act2"})


def test_a_reloaded_vocabulary_adapter_remaps_the_generation_config(tmp_path):
    """The compressed network's generation config follows the loaded vocabulary, not the placeholder the
    tuner is built with before PEFT loads the weights: an end-of-turn id past the kept count (here the
    last kept token) is remapped to its position, as when the adapter was built (it used to be dropped)."""
    from hf_projcomp import ProjCompConfig, ProjCompModel, get_projcomp_model

    tokenizer = tiny_tokenizer("byte_fallback")

    def build(model):
        config = ProjCompConfig(hidden_size=48, intermediate_size=64, vocab_size=450, importance="compact")
        return get_projcomp_model(model, config, calibration_data=TRAIN * 4, tokenizer=tokenizer, progress=False)

    kept = build(model_for("gemma3_text", tokenizer)).base_model.selection_vocab.tolist()
    end = kept[-1]
    assert end >= len(kept)  # a placeholder of the kept count cannot hold it

    def base():
        model = model_for("gemma3_text", tokenizer)
        model.generation_config.eos_token_id = [1, end]
        return model

    pc = build(base())
    assert pc.base_model.compressed.generation_config.eos_token_id == [kept.index(1), len(kept) - 1]
    pc.save_pretrained(tmp_path / "adapter")
    reloaded = ProjCompModel.from_pretrained(base(), tmp_path, subfolder="adapter")  # the tokenizer from there too
    assert reloaded.tokenizer.get_vocab() == pc.tokenizer.get_vocab()
    assert reloaded.base_model.compressed.generation_config.eos_token_id == [kept.index(1), len(kept) - 1]
    assert reloaded.merge_and_unload().generation_config.eos_token_id == [kept.index(1), len(kept) - 1]
