"""Text to token blocks (hf_projcomp/blocks.py), against blocks worked out by hand."""

from __future__ import annotations

import pytest

from hf_projcomp.blocks import cut_blocks, text_blocks

BOS = 0


class Letters:
    """A tokenizer by hand: a=1, b=2, ...; its default encoding starts with BOS (0)."""

    bos_token_id = BOS

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [ord(c) - ord("a") + 1 for c in text]
        return {"input_ids": [BOS, *ids] if add_special_tokens else ids}


TEXTS = ["abc", "defgh"]  # 1 2 3 | 4 5 6 7 8


def blocks(texts=TEXTS, block_size=3, **kwargs):
    return text_blocks(Letters(), texts, block_size, progress=False, **kwargs)


def test_one_stream_of_the_texts_as_the_tokenizer_encodes_them():
    # 0 1 2 3 0 4 5 6 7 8 in blocks of 3; the tail (8) is dropped
    assert blocks(add_special_tokens=True) == [[0, 1, 2], [3, 0, 4], [5, 6, 7]]
    assert blocks() == [[1, 2, 3], [4, 5, 6]]  # the bare text: 1 2 3 4 5 6 7 8


def test_bos_starts_every_block():
    # BOS + 2 text tokens a block: 1 2 | 3 4 | 5 6 | 7 8
    assert blocks(bos=BOS) == [[0, 1, 2], [0, 3, 4], [0, 5, 6], [0, 7, 8]]
    assert blocks(bos=BOS, block_size=4) == [[0, 1, 2, 3], [0, 4, 5, 6]]  # 7 8 dropped


def test_budgets_read_only_the_text_they_need():
    read = []

    def texts():
        for text in TEXTS:
            read.append(text)
            yield text

    assert blocks(texts(), bos=BOS, max_blocks=1) == [[0, 1, 2]] and read == ["abc"]
    assert blocks(bos=BOS, max_tokens=5) == [[0, 1, 2], [0, 3, 4]]  # 1..5 read; 5 is a tail
    assert blocks(bos=BOS, max_tokens=5, max_blocks=1) == [[0, 1, 2]]


def test_a_short_text_gives_one_short_block_only_when_asked():
    assert blocks(["ab"], block_size=4, bos=BOS) == []
    assert blocks(["ab"], block_size=4, bos=BOS, keep_short=True) == [[0, 1, 2]]
    assert cut_blocks([], 4, keep_short=True) == [[]]


def test_cut_blocks():
    ids = list(range(1, 11))
    assert cut_blocks(ids, 4) == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert cut_blocks(ids, 4, 99) == [[99, 1, 2, 3], [99, 4, 5, 6], [99, 7, 8, 9]]
    assert cut_blocks(ids, 4, 99, max_blocks=2) == [[99, 1, 2, 3], [99, 4, 5, 6]]
    with pytest.raises(ValueError, match="block_size"):
        cut_blocks(ids, 1, 99)


def test_no_text_is_an_error_naming_it():
    with pytest.raises(ValueError, match="train_data is empty"):
        blocks([], name="train_data")


def test_the_progress_bar_names_the_budget_and_never_changes_its_total(capsys):
    """A budget larger than the text used to show as the bar's total, then jump down to what was read."""
    from hf_projcomp.blocks import read_tokens

    read_tokens(Letters(), TEXTS, 1_000_000, progress=True, desc="Tokenising")
    err = capsys.readouterr().err
    assert "Tokenising (up to 1,000,000)" in err and "8tok" in err.replace(" ", "")
    assert "/1000000" not in err and "/8" not in err
