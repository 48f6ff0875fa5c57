"""How often a pruned tokenizer segments words exactly as the original did."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch

# A word with the whitespace before it: both '▁word' (SentencePiece) and 'Ġword' (byte-level)
# tokenizers attach the space to the following word, so this unit never splits a token.
_WORD = re.compile(r"\s*\S+")


def segmentation_agreement(
    old_tokenizer: Any,
    new_tokenizer: Any,
    kept_old_ids: torch.Tensor,
    texts: Iterable[str],
    *,
    covered_only: bool = False,
) -> float:
    """Fraction of word occurrences whose new token ids, mapped through ``kept_old_ids``, equal the
    original token ids.

    Words are whitespace-led runs (``r"\\s*\\S+"``), each encoded on its own without special tokens.
    ``covered_only`` counts only words whose original segmentation uses kept tokens alone, i.e. the
    words a pruned tokenizer could reproduce exactly.
    """
    counts = Counter(w for text in texts for w in _WORD.findall(text))
    if not counts:
        return 1.0
    words = list(counts)
    old = _encode(old_tokenizer, words)
    new = _encode(new_tokenizer, words)
    to_old = kept_old_ids.tolist()
    kept = set(to_old)
    agree = total = 0
    for word, old_ids, new_ids in zip(words, old, new, strict=True):
        if covered_only and not kept.issuperset(old_ids):
            continue
        total += counts[word]
        agree += counts[word] * ([to_old[i] for i in new_ids] == old_ids)
    return agree / total if total else 1.0


def _encode(tokenizer: Any, words: list[str]) -> list[list[int]]:
    if hasattr(tokenizer, "encode_batch"):  # a bare tokenizers.Tokenizer
        return [e.ids for e in tokenizer.encode_batch(words, add_special_tokens=False)]
    return tokenizer(words, add_special_tokens=False)["input_ids"]
