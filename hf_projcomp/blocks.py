"""Text to fixed-length token blocks: the one place where text is tokenised and cut, BOS rule included.

Training (:func:`~hf_projcomp.training.distill_pruned`, ``projcomp train``) and calibration
(:func:`~hf_projcomp.importance.calibration.tokenize_calibration`) all cut their text here:
:func:`text_blocks` tokenises texts one by one (:func:`read_tokens`: up to a token budget, with a
progress bar) and :func:`cut_blocks` cuts the token stream into blocks.

The BOS rule, one of two (or neither):

* ``add_special_tokens=True``: each text as the tokenizer encodes it by default (a BOS at each
  text's start where the tokenizer adds one, an EOS at its end where it adds one), the texts
  concatenated into one stream cut into ``block_size``-token blocks;
* ``bos=<id>``: the texts without special tokens, every block BOS + the next ``block_size - 1``
  tokens, as a model sees text when it serves.

A stream's tail shorter than a block is dropped (``keep_short`` aside).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tqdm.auto import tqdm


def read_tokens(
    tokenizer: Any,
    texts: Iterable[str],
    max_tokens: int | None,
    progress: bool = True,
    *,
    add_special_tokens: bool = False,
    desc: str = "Tokenising calibration text",
    name: str = "calibration_data",
) -> tuple[list[str], list[int]]:
    """Tokenise ``texts`` one by one (no special tokens, unless ``add_special_tokens``) until
    ``max_tokens`` are gathered (``None``: all of them).

    Returns the texts read and their concatenated token ids (at most ``max_tokens``); later texts are
    never read. ``ValueError`` (calling the texts ``name``) when there is no text at all.
    """
    read: list[str] = []
    stream: list[int] = []
    # No total: how many tokens the texts hold is known only once read, and a budget larger than that
    # would make the bar's total jump at the end; the budget goes in the description instead.
    label = desc if max_tokens is None else f"{desc} (up to {max_tokens:,})"
    with tqdm(desc=label, disable=not progress, unit="tok") as bar:
        for text in texts:
            read.append(text)
            ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
            take = len(ids) if max_tokens is None else min(len(ids), max_tokens - len(stream))
            stream.extend(ids[:take])
            bar.update(take)
            if max_tokens is not None and len(stream) >= max_tokens:
                break
    if not read:
        raise ValueError(f"{name} is empty")
    return read, stream


def cut_blocks(
    ids: Sequence[int],
    block_size: int,
    bos: int | None = None,
    *,
    max_blocks: int | None = None,
    keep_short: bool = False,
) -> list[list[int]]:
    """``ids`` cut from the start into blocks of ``block_size`` tokens, each ``bos`` + the next
    ``block_size - 1`` ids when ``bos`` is given; the tail shorter than a block is dropped.

    Args:
        ids: the token stream.
        block_size: tokens per block, ``bos`` included.
        bos: the id starting every block, or ``None``.
        max_blocks: at most this many blocks (the first ones).
        keep_short: when ``ids`` fill no whole block, return one shorter block (``bos`` + all of them)
            instead of none.
    """
    prefix = [] if bos is None else [bos]
    body = block_size - len(prefix)
    if body < 1:
        raise ValueError(f"block_size must leave room for at least one token after BOS, got {block_size}")
    end = len(ids) if max_blocks is None else min(len(ids), max_blocks * body)
    blocks = [prefix + list(ids[i : i + body]) for i in range(0, end - body + 1, body)]
    if not blocks and keep_short:
        return [prefix + list(ids[:body])]
    return blocks


def text_blocks(
    tokenizer: Any,
    texts: Iterable[str],
    block_size: int,
    *,
    bos: int | None = None,
    add_special_tokens: bool = False,
    max_tokens: int | None = None,
    max_blocks: int | None = None,
    keep_short: bool = False,
    progress: bool = True,
    desc: str = "Tokenising text",
    name: str = "text",
) -> list[list[int]]:
    """``texts`` tokenised one by one, concatenated and cut into ``block_size``-token blocks
    (:func:`cut_blocks`); only the text the blocks need is read.

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts: the texts, read lazily (a stream stops being read at the budget).
        block_size: tokens per block, BOS included.
        bos: the id starting every block (``tokenizer.bos_token_id``), or ``None``.
        add_special_tokens: encode each text with the tokenizer's own special tokens (its BOS at each
            text's start); ``False`` encodes the bare text.
        max_tokens: read at most this many tokens of text (``None``: all of it).
        max_blocks: at most this many blocks; reads at most the tokens they hold.
        keep_short: when the text fills no whole block, return one shorter block instead of none.
        progress: a progress bar over the tokens read.
        desc: the progress bar's label.
        name: what errors call the texts (``ValueError`` when there is none).
    """
    if max_blocks is not None:
        budget = max_blocks * (block_size - (bos is not None))
        max_tokens = budget if max_tokens is None else min(max_tokens, budget)
    _, stream = read_tokens(
        tokenizer, texts, max_tokens, progress, add_special_tokens=add_special_tokens, desc=desc, name=name
    )
    return cut_blocks(stream, block_size, bos, max_blocks=max_blocks, keep_short=keep_short)


__all__ = ["cut_blocks", "read_tokens", "text_blocks"]
