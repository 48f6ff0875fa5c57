"""Vocabulary pruning on tiny tokenizers trained here: byte-fallback ('▁', Llama-2/Gemma style) and
byte-level (GPT-2/Qwen2 style). The real Gemma tokenizer is exercised outside the unit tests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hf_projcomp.vocab import VocabularyPruningError, prune_tokenizer, required_token_ids, segmentation_agreement
from tests.tiny_tokenizers import HELD_OUT, SPECIALS, TRAIN, _byte_fallback_backend, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizers_by_kind() -> dict[str, PreTrainedTokenizerFast]:
    return {kind: tiny_tokenizer(kind) for kind in ("byte_fallback", "byte_level")}


def _frequent_ids(tokenizer, share: float = 0.4) -> list[int]:
    counts = Counter(i for text in TRAIN for i in tokenizer(text, add_special_tokens=False)["input_ids"])
    ranked = [i for i, _ in counts.most_common()]
    return ranked[: int(len(ranked) * share)]


@pytest.fixture(scope="module")
def pruned(tokenizers_by_kind):
    """kind -> (old, new, kept_old_ids, keep_ids)."""
    out = {}
    for kind, old in tokenizers_by_kind.items():
        keep = _frequent_ids(old)
        new, kept = prune_tokenizer(old, keep)
        out[kind] = (old, new, kept, keep)
    return out


CASES = ["byte_fallback", "byte_level"]


def test_required_ids(tokenizers_by_kind):
    bf = tokenizers_by_kind["byte_fallback"]
    required = required_token_ids(bf)
    tokens = set(bf.convert_ids_to_tokens(sorted(required)))
    assert {f"<0x{b:02X}>" for b in range(256)} | set(SPECIALS) | {"▁", "a", "T"} <= tokens
    assert not any(len(t) > 1 and not t.startswith("<") for t in tokens)  # no merged words forced in

    bl = tokenizers_by_kind["byte_level"]
    tokens = set(bl.convert_ids_to_tokens(sorted(required_token_ids(bl))))
    assert tokens == set(pre_tokenizers.ByteLevel.alphabet()) | {"<|endoftext|>"}


@pytest.mark.parametrize("case", CASES)
def test_shape_of_the_result(pruned, case):
    old, new, kept, keep = pruned[case]
    assert type(new) is type(old)
    assert kept.dtype == torch.long and kept.dim() == 1
    assert kept.tolist() == sorted(set(kept.tolist())), "ascending old ids, no duplicates"
    assert len(new) == len(kept) == new.backend_tokenizer.get_vocab_size() < len(old)
    assert set(keep) | required_token_ids(old) <= set(kept.tolist())
    # new id -> old id names the same token
    assert new.convert_ids_to_tokens(list(range(len(new)))) == old.convert_ids_to_tokens(kept.tolist())
    # merges only use kept tokens and are fewer
    new_model = json.loads(new.backend_tokenizer.to_str())["model"]
    old_model = json.loads(old.backend_tokenizer.to_str())["model"]
    assert len(new_model["merges"]) < len(old_model["merges"])
    for a, b in new_model["merges"]:
        assert {a, b, a + b} <= new_model["vocab"].keys()


@pytest.mark.parametrize("case", CASES)
def test_any_text_round_trips_within_bounds(pruned, case):
    old, new, _, _ = pruned[case]
    for text in HELD_OUT + TRAIN:
        assert old.decode(old.encode(text, add_special_tokens=False)) == text  # the premise
        ids = new.encode(text, add_special_tokens=False)
        assert ids and max(ids) < len(new)
        assert new.decode(ids) == text


@pytest.mark.parametrize("case", CASES)
def test_special_tokens_keep_their_strings(pruned, case):
    old, new, kept, _ = pruned[case]
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(new, name) == getattr(old, name)
        if getattr(old, name) is not None:
            assert kept[getattr(new, f"{name}_id")] == getattr(old, f"{name}_id")
    # the post-processor inserts the remapped id, and a literal special token still matches
    text = f"hello {old.eos_token} world"
    old_ids, new_ids = old(text)["input_ids"], new(text)["input_ids"]
    assert new.eos_token_id in new_ids and max(new_ids) < len(new)
    special, to_old = {old.bos_token_id, old.eos_token_id}, kept.tolist()
    assert [to_old[i] for i in new_ids if to_old[i] in special] == [i for i in old_ids if i in special]


@pytest.mark.parametrize("case", CASES)
def test_covered_text_keeps_its_segmentation(pruned, case):
    old, new, kept, _ = pruned[case]
    kept_set = set(kept.tolist())
    words = {w for text in TRAIN for w in text.split()}
    covered = [w for w in sorted(words) if kept_set.issuperset(old.encode(" " + w, add_special_tokens=False))]
    assert len(covered) > 10
    text = " " + " ".join(covered)
    old_ids = old.encode(text, add_special_tokens=False)
    assert [kept.tolist()[i] for i in new.encode(text, add_special_tokens=False)] == old_ids
    assert segmentation_agreement(old, new, kept, TRAIN, covered_only=True) == 1.0
    assert segmentation_agreement(old, new, kept, TRAIN) < 1.0  # some words did lose tokens


def _hand_bpe(tokens: list[str], merges: list[tuple[str, str]]) -> PreTrainedTokenizerFast:
    """A byte-fallback BPE with the given merges in rank order (no normalizer: plain letters)."""
    order = SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + tokens
    backend = Tokenizer(models.BPE({t: i for i, t in enumerate(order)}, merges, byte_fallback=True, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>")


def _tokens(tok, text: str) -> list[str]:
    return tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False))


def test_ancestors_are_the_pieces_of_the_real_run():
    # Gemma-style: every split of 'abc' is a merge; its first merge is a+bc, but BPE really builds
    # it as ab+c because ab ranks first. Keeping bc but not ab would segment 'abcd' as a|bcd.
    tok = _hand_bpe(
        ["a", "b", "c", "d", "ab", "bc", "abc", "bcd"],
        [("a", "b"), ("b", "c"), ("bc", "d"), ("a", "bc"), ("ab", "c")],
    )
    assert _tokens(tok, "abc abcd") == ["abc", "abc", "d"]
    new, kept = prune_tokenizer(tok, tok.convert_tokens_to_ids(["abc", "bcd", "d"]))
    kept_tokens = set(tok.convert_ids_to_tokens(kept.tolist()))
    assert {"ab", "abc", "bc", "bcd"} <= kept_tokens
    assert _tokens(new, "abc abcd bcd") == _tokens(tok, "abc abcd bcd") == ["abc", "abc", "d", "bcd"]


def test_agreement_counts_word_occurrences_segmented_as_before(pruned):
    """segmentation_agreement against a word-by-word count done here: which occurrences keep their ids."""
    old, new, kept, _ = pruned["byte_level"]
    texts = ["the lobster the lobster zyzzyva", "the quokka"]
    words = [" the", " lobster", " the", " lobster", " zyzzyva", " the", " quokka"]
    words[0], words[5] = "the", "the"  # a text's first word has no space before it
    to_old = kept.tolist()
    same = [
        [to_old[i] for i in new.encode(w, add_special_tokens=False)] == old.encode(w, add_special_tokens=False)
        for w in words
    ]
    assert 0 < sum(same) < len(same)  # the tiny vocabulary keeps some of these words and splits others
    assert segmentation_agreement(old, new, kept, texts) == pytest.approx(sum(same) / len(same))
    covered = [
        s for w, s in zip(words, same, strict=True) if set(old.encode(w, add_special_tokens=False)) <= set(to_old)
    ]
    assert segmentation_agreement(old, new, kept, texts, covered_only=True) == pytest.approx(
        sum(covered) / len(covered)
    )


@pytest.mark.parametrize("kind", ["byte_fallback", "byte_level"])
def test_specials_set_after_loading_survive_pruning(kind):
    """``pad_token = eos_token``, special tokens added at run time, a chat template and the padding
    side live on the tokenizer object, not in its init kwargs; the pruned tokenizer keeps them all."""
    tok = tiny_tokenizer(kind)
    tok.pad_token = tok.eos_token
    tok.add_special_tokens({"additional_special_tokens": ["<tool>", "<think>"]})
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
    tok.padding_side = "left"
    new, kept = prune_tokenizer(tok, _frequent_ids(tok))
    to_old = kept.tolist()
    assert new.special_tokens_map == tok.special_tokens_map and new.pad_token == tok.eos_token
    assert to_old[new.pad_token_id] == tok.pad_token_id == tok.eos_token_id
    assert new.extra_special_tokens == ["<tool>", "<think>"]
    assert [to_old[i] for i in new.extra_special_tokens_ids] == tok.extra_special_tokens_ids
    assert len(set(new.extra_special_tokens_ids) | {new.eos_token_id}) == 3  # nothing collapsed onto eos
    text = "hi <tool> there <think>"
    assert [to_old[i] for i in new(text)["input_ids"]][:3] == tok(text)["input_ids"][:3]
    assert new.chat_template == tok.chat_template and new.padding_side == "left"
    chat = [{"role": "user", "content": "hello"}]
    assert new.apply_chat_template(chat, tokenize=False) == tok.apply_chat_template(chat, tokenize=False)
    batch = new(["a", "the lobster"], padding=True)["input_ids"]
    assert batch[0][0] == new.pad_token_id  # left padding with eos


def test_max_vocab_size_takes_the_longest_ranked_prefix_that_fits(tokenizers_by_kind):
    tok = tokenizers_by_kind["byte_fallback"]
    counts = Counter(i for text in TRAIN for i in tok(text, add_special_tokens=False)["input_ids"])
    ranked = [i for i, _ in counts.most_common()]
    floor = len(required_token_ids(tok))
    budget = floor + 60
    new, kept = prune_tokenizer(tok, ranked, max_vocab_size=budget)
    assert budget - 5 <= len(kept) <= budget
    assert len(new) == len(kept)
    assert set(ranked[:20]) <= set(kept.tolist())
    with pytest.raises(VocabularyPruningError, match="must be kept"):
        prune_tokenizer(tok, ranked, max_vocab_size=floor - 1)


def test_placeholders_are_dropped_unless_asked(tokenizers_by_kind):
    backend = _byte_fallback_backend()
    backend.add_special_tokens([f"<unused{i}>" for i in range(8)] + ["<start_of_turn>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
    names = lambda ids: set(tok.convert_ids_to_tokens(sorted(ids)))  # noqa: E731
    assert "<start_of_turn>" in names(required_token_ids(tok))
    assert "<unused3>" not in names(required_token_ids(tok))
    assert "<unused3>" in names(required_token_ids(tok, keep_placeholders=True))
    new, _kept = prune_tokenizer(tok, _frequent_ids(tok))
    assert new.encode("<start_of_turn>x", add_special_tokens=False)[0] == new.convert_tokens_to_ids("<start_of_turn>")
    assert new.decode(new.encode("<unused3>", add_special_tokens=False)) == "<unused3>"


def test_bare_tokenizers_object(tokenizers_by_kind):
    backend = tokenizers_by_kind["byte_level"].backend_tokenizer
    new, kept = prune_tokenizer(backend, [5, 6, 7])
    assert isinstance(new, Tokenizer) and new.get_vocab_size() == len(kept)
    assert new.decode(new.encode("naïve 🙂").ids) == "naïve 🙂"


def test_bad_keep_ids(tokenizers_by_kind):
    tok = tokenizers_by_kind["byte_level"]
    with pytest.raises(VocabularyPruningError, match="not a token id"):
        prune_tokenizer(tok, [1, len(tok) + 5])


def _wordpiece() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordPiece({"[UNK]": 0, "the": 1, "lob": 2, "##ster": 3}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def _unigram() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0), ("b", -2.0)], unk_id=0))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def _plain_bpe() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE({"<unk>": 0, "a": 1, "b": 2, "ab": 3}, [("a", "b")], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


@pytest.mark.parametrize(
    "make, message",
    [(_wordpiece, "WordPiece"), (_unigram, "Unigram"), (_plain_bpe, "without byte_fallback and without a ByteLevel")],
)
def test_unsupported_kinds_raise(make, message):
    tok = make()
    for call in (lambda: prune_tokenizer(tok, [0, 1]), lambda: required_token_ids(tok)):
        with pytest.raises(VocabularyPruningError, match=f"(?s)isn't supported.*{message}|{message}.*isn't supported"):
            call()
    assert issubclass(VocabularyPruningError, ValueError)


def test_save_and_reload_in_a_fresh_process(pruned, tokenizers_by_kind, tmp_path: Path):
    """save_pretrained -> AutoTokenizer.from_pretrained elsewhere gives the same class and ids, also for
    a class (GemmaTokenizer) that rebuilds its pipeline from the saved vocabulary and merges."""
    gemma_dir = tmp_path / "gemma_style"
    tokenizers_by_kind["byte_fallback"].save_pretrained(gemma_dir)
    config_path = gemma_dir / "tokenizer_config.json"
    config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), tokenizer_class="GemmaTokenizer")))
    gemma = AutoTokenizer.from_pretrained(gemma_dir)
    assert type(gemma).__name__ == "GemmaTokenizer"

    results = {kind: pruned[kind][1] for kind in CASES}
    results["gemma"], _ = prune_tokenizer(gemma, _frequent_ids(gemma))
    assert type(results["gemma"]) is type(gemma)
    texts = HELD_OUT + TRAIN + ["<eos> x <bos>"]
    expected = {}
    for name, tok in results.items():
        tok.save_pretrained(tmp_path / name)
        expected[name] = [
            type(tok).__name__,
            len(tok),
            [tok(t)["input_ids"] for t in texts],
            [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id],
        ]
    script = (
        "import json, sys\n"
        "from transformers import AutoTokenizer\n"
        "root, names, texts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])\n"
        "out = {}\n"
        "for name in names:\n"
        "    tok = AutoTokenizer.from_pretrained(f'{root}/{name}')\n"
        "    out[name] = [type(tok).__name__, len(tok), [tok(t)['input_ids'] for t in texts],\n"
        "                 [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id]]\n"
        "print(json.dumps(out))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), json.dumps(list(results)), json.dumps(texts)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == expected


def test_grown_closure_of_every_prefix_is_its_closure(tokenizers_by_kind):
    """GrowingClosure's prefix n equals the closure computed from scratch (ancestors, recursively)."""
    from hf_projcomp.vocab.closure import GrowingClosure, MergeGraph
    from hf_projcomp.vocab.tokenizer_json import read_document

    tok = tokenizers_by_kind["byte_fallback"]
    doc = read_document(tok)
    graph = MergeGraph.build(doc)
    ranked = [doc.id_to_token[i] for i in _frequent_ids(tok, share=1.0)]
    seeds = {"<eos>", "<bos>"}
    growing = GrowingClosure(graph, seeds, ranked)
    half = growing.within(len(seeds) + 40)
    assert len(half) <= len(seeds) + 40 < growing.sizes[-1] and len(growing.sizes) <= len(ranked)  # grew only so far
    growing.grow_past(float("inf"))
    order, sizes = growing.order, growing.sizes
    assert len(sizes) == len(ranked) + 1 and sizes == sorted(sizes)
    for n in (0, 1, 7, len(ranked) // 2, len(ranked)):
        closure, stack = set(), list(seeds | set(ranked[:n]))
        while stack:
            t = stack.pop()
            if t not in closure:
                closure.add(t)
                stack.extend(graph.ancestors(t) if graph.needs_merge(t) else ())
        assert set(order[: sizes[n]]) == closure, n
