"""Tokenizer files beside tokenizer.json (``tokenizer.model``, ``vocab.json`` + ``merges.txt``) are
written pruned and consistent, or not at all; tested with real tokenizer classes loaded from files."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import sentencepiece as spm
from transformers import GemmaTokenizer, LlamaTokenizer, Qwen2Tokenizer

from hf_projcomp.export import VerificationError, check_tokenizer
from hf_projcomp.vocab import prune_tokenizer
from hf_projcomp.vocab.files import PROBE_TEXTS, save_tokenizer, side_file_mismatches
from tests.tiny_tokenizers import HELD_OUT, TRAIN, tiny_tokenizer

TEXTS = HELD_OUT + TRAIN + list(PROBE_TEXTS)


def train_sentencepiece(directory: Path, add_dummy_prefix: bool) -> Path:
    """A tiny sentencepiece BPE with byte fallback, as Gemma (no dummy prefix) or Llama-2 train theirs."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAIN * 3),
        model_writer=model,
        vocab_size=500,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        add_dummy_prefix=add_dummy_prefix,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        minloglevel=2,
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    return directory


def frequent_ids(tokenizer, n: int = 60) -> list[int]:
    counts = Counter(i for text in TRAIN for i in tokenizer(text, add_special_tokens=False)["input_ids"])
    return [i for i, _ in counts.most_common(n)]


def plain_ids(tokenizer, texts=TEXTS) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


@pytest.fixture(scope="module")
def gemma_style(tmp_path_factory) -> GemmaTokenizer:
    return GemmaTokenizer.from_pretrained(train_sentencepiece(tmp_path_factory.mktemp("gemma-sp"), False))


def test_pruned_sentencepiece_model_matches_the_pruned_tokenizer(gemma_style, tmp_path):
    pruned, _kept = prune_tokenizer(gemma_style, frequent_ids(gemma_style))
    assert len(pruned) < len(gemma_style)
    assert save_tokenizer(pruned, tmp_path) == ["tokenizer.model"]
    processor = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert processor.get_piece_size() == len(pruned)
    assert [processor.id_to_piece(i) for i in range(len(pruned))] == pruned.convert_ids_to_tokens(
        list(range(len(pruned)))
    )
    assert [processor.encode(t) for t in TEXTS] == plain_ids(pruned)
    assert [processor.decode(processor.encode(t)) for t in TEXTS] == TEXTS  # round-trips, bytes included
    assert all(processor.is_byte(pruned.convert_tokens_to_ids(f"<0x{b:02X}>")) for b in range(256))
    assert processor.is_control(pruned.bos_token_id) and processor.unk_id() == pruned.unk_token_id
    # transformers converting our file alone gives the same tokenizer
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tmp_path / "tokenizer.model", alone)
    from_file = GemmaTokenizer.from_pretrained(alone)
    assert from_file.get_vocab() == pruned.get_vocab() and plain_ids(from_file) == plain_ids(pruned)
    assert side_file_mismatches(tmp_path, pruned) == []


def test_unpruned_sentencepiece_model_is_rewritten_consistently(gemma_style, tmp_path):
    save_tokenizer(gemma_style, tmp_path)
    processor = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert [processor.encode(t) for t in TEXTS] == plain_ids(gemma_style)


def test_no_sentencepiece_model_where_it_would_disagree(tmp_path):
    """transformers converts a dummy-prefix model to Metaspace(prepend_scheme="first"), which, unlike
    sentencepiece, adds no '▁' before text that starts with a space: no model can match it, none is written."""
    llama = LlamaTokenizer.from_pretrained(train_sentencepiece(tmp_path / "llama-sp", True))
    pruned, _ = prune_tokenizer(llama, frequent_ids(llama))
    assert save_tokenizer(pruned, tmp_path / "out") == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]


def test_byte_level_vocab_and_merges_match_the_pruned_tokenizer(tmp_path):
    source = tiny_tokenizer("byte_level")
    model = json.loads(source.backend_tokenizer.to_str())["model"]
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "vocab.json").write_text(json.dumps(model["vocab"]), encoding="utf-8")
    (tmp_path / "base" / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in model["merges"]), encoding="utf-8"
    )
    base = Qwen2Tokenizer(
        vocab_file=str(tmp_path / "base" / "vocab.json"), merges_file=str(tmp_path / "base" / "merges.txt")
    )
    pruned, _kept = prune_tokenizer(base, frequent_ids(base))
    assert save_tokenizer(pruned, tmp_path / "out") == ["merges.txt", "vocab.json"]
    vocab = json.loads((tmp_path / "out" / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) < len(model["vocab"]) and max(vocab.values()) < len(pruned)
    reread = Qwen2Tokenizer(
        vocab_file=str(tmp_path / "out" / "vocab.json"), merges_file=str(tmp_path / "out" / "merges.txt")
    )
    assert reread.get_vocab() == {t: i for t, i in pruned.get_vocab().items() if t in vocab} | {
        t: i for t, i in reread.get_vocab().items() if t not in vocab
    }
    assert plain_ids(reread) == plain_ids(pruned)


def test_a_stale_side_file_is_removed_or_reported(gemma_style, tmp_path):
    pruned, _ = prune_tokenizer(tiny_tokenizer("byte_level"), frequent_ids(tiny_tokenizer("byte_level")))
    stale = Path(gemma_style.vocab_file)
    (tmp_path / "out").mkdir()
    shutil.copy(stale, tmp_path / "out" / "tokenizer.model")  # left over from an earlier save
    save_tokenizer(pruned, tmp_path / "out")
    assert not (tmp_path / "out" / "tokenizer.model").exists()

    # a tokenizer.model copied beside a pruned tokenizer afterwards fails verification
    gemma_pruned, _ = prune_tokenizer(gemma_style, frequent_ids(gemma_style))
    save_tokenizer(gemma_pruned, tmp_path / "gemma")
    shutil.copy(stale, tmp_path / "gemma" / "tokenizer.model")
    assert side_file_mismatches(tmp_path / "gemma", gemma_pruned)

    class Config:
        vocab_size = len(gemma_pruned)
        bos_token_id = eos_token_id = pad_token_id = unk_token_id = None

    with pytest.raises(VerificationError, match=r"tokenizer.model"):
        check_tokenizer(Config(), None, gemma_pruned, tmp_path / "gemma")
