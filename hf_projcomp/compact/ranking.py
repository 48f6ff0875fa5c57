"""COMPACT's vocabulary ranking: which tokens a pruned vocabulary keeps first.

Counted calibration frequency plus the model's own predicted next-token mass where the text's next
token is rare, limited to the calibration text's characters, with the letters of the calibration
text's scripts (and optionally the tokenizer's most frequent characters) ranked as if seen once.
``compact_prune`` keeps the top of this ranking (see its module).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Collection, Iterable

import torch
from transformers import PreTrainedTokenizerBase

# The prediction ranks unseen tokens only from positions where the text's next token is this rare
# in calibration: there the model spreads its mass over rare alternatives (other forms, names),
# which served text also uses, while common positions mostly add to tokens the counts rank anyway.
# Gemma-3 at 52,692 ids, calibrated on wikitext-2 valid's first 80%: extra tokens on its held-out
# tail +0.81% instead of +1.37% (all positions); on WikiText-2 test +1.91% instead of +2.54%.
# Thresholds 1 to 30 measured within 0.1% of one another. (32 activation sequences; with 64:
# +0.35% on the tail, +1.76% on test, against +0.71% and +2.26% from all positions.)
RARE_NEXT_COUNT = 10

# A script's letters rank as if seen once only when it writes this share of the calibration
# text's letters: a stray foreign name must not pull in a whole script (Gemma-3 holds thousands
# of single-ideograph tokens; WikiText-2 test writes 47 CJK letters among 975,000 Latin ones).
SCRIPT_MIN_SHARE = 1e-3


def token_ranking(
    counts: torch.Tensor,
    predicted_mass: torch.Tensor | None = None,
    prior_weight: float = 1.0,
    in_alphabet: torch.Tensor | None = None,
    seen_once: torch.Tensor | None = None,
) -> torch.Tensor:
    """Token ids, most likely first: counted unigram frequency plus ``prior_weight`` × the
    model-predicted one (the prediction ranks tokens the calibration text happened not to use, such
    as other forms of its words); ties by id (BPE ids roughly follow corpus frequency).

    ``in_alphabet`` (bool per id) limits the prediction to tokens written in the calibration text's
    characters: a multilingual model spreads mass over scripts the target text never uses. Measured
    on Gemma-3 at 52,000 kept ids (wikitext-2 valid calibration), this cut the extra tokens the
    pruned tokenizer needs on WikiText-2 test from +3.2% to +2.6%.

    ``seen_once`` (ids) score at least as a token counted once (see :func:`script_letters`).
    """
    total = max(1, int(counts.sum()))
    score = counts.double() / total
    if predicted_mass is not None:
        mass = predicted_mass.double()
        if in_alphabet is not None:
            mass = mass * in_alphabet.to(mass.dtype)
        score = score + prior_weight * mass / max(1e-12, float(mass.sum()))
    if seen_once is not None and len(seen_once):
        score[seen_once] = score[seen_once].clamp_min(1.0 / total)
    return torch.sort(-score, stable=True).indices


def character_counts(texts: Iterable[str]) -> Counter[str]:
    """How often each character occurs in ``texts``."""
    chars: Counter[str] = Counter()
    for text in texts:
        chars.update(text)
    return chars


def token_texts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Each id's decoded text: byte-level pieces read as their characters, partial UTF-8 as U+FFFD."""
    return tokenizer.batch_decode([[i] for i in range(len(tokenizer))])


def _script(ch: str) -> str:
    # The first word of a letter's Unicode name is its script (LATIN, GREEK, CYRILLIC, CJK, ...).
    return unicodedata.name(ch, "").split(" ")[0]


def script_letters(pieces: list[str], chars: Counter[str], min_share: float = SCRIPT_MIN_SHARE) -> torch.Tensor:
    """Ids of the single-letter tokens (``pieces`` from :func:`token_texts`) of every script that
    writes at least ``min_share`` of the letters in ``chars`` (calibration character counts).

    Calibration text never holds every letter of its own script that served text will (names
    such as Hyūga or Encyclopædia), and a letter the pruned vocabulary lacks falls back to
    byte tokens that the model hardly trained: on Gemma-3 the first byte token of such a letter
    cost 25-56 bits. Gemma-3 has 603 single Latin-letter tokens (Greek, 0.002% of wikitext-2
    valid's letters, falls below ``min_share``). Measured at 50% of its parameters calibrated on
    wikitext-2 valid (``benchmarks/compact_gemma.py``), ranking them as seen once took bits per
    byte on WikiText-2 test from 1.297 to 1.288 (1.122 to 1.108 with the text cut into chunks
    scored alone) and the extra tokens on words absent from calibration from 250 to 225 of 1,741.
    In a screen at the same size calibrated on valid's first 80%, its held-out tail and the test
    file's middle moved by less than 0.0005.
    """
    letters: Counter[str] = Counter()
    for ch, n in chars.items():
        if ch.isalpha():
            letters[_script(ch)] += n
    total = sum(letters.values())
    scripts = {s for s, n in letters.items() if n >= min_share * total}
    ids = [i for i, piece in enumerate(pieces) if len(piece) == 1 and piece.isalpha() and _script(piece) in scripts]
    return torch.tensor(ids, dtype=torch.long)


def frequent_characters(tokenizer: PreTrainedTokenizerBase, n: int) -> torch.Tensor:
    """Ids of the tokenizer's ``n`` first single-character tokens in id order, which BPE and
    SentencePiece assign by corpus frequency (Gemma-3: newline, '▁', e, t, a, ... then à at 195,
    æ at 801, ū at 1,435), whatever their script.

    For served text with characters outside the calibration text's scripts (see
    :func:`script_letters`); each takes the slot of a ranked token. Measured on Gemma-3 calibrated
    on wikitext-2 valid (bits per byte, text cut at line breaks into chunks scored alone), 1,000
    characters against none (before script letters existed):

    * 52,692 ids: -0.007 on the first 60,000 characters of WikiText-2 test (Chinese and Japanese
      names), +0.0005 on 60,000 characters from its middle; 4,000 characters: +0.014 there.
    * 24,625 ids: +0.000 on the first 60,000, +0.010 on the middle and on held-out valid.

    Hence off by default.
    """
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    singles = [i for i, piece in enumerate(pieces) if piece is not None and len(piece) == 1]
    return torch.tensor(singles[:n], dtype=torch.long)


def alphabet_mask(pieces: list[str], chars: Collection[str], vocab_size: int) -> torch.Tensor:
    """Per token id: does its text (``pieces`` from :func:`token_texts`) use only ``chars`` (or
    whitespace)? Tokens that decode to partial UTF-8 (byte-level pieces) are not judged and count
    as inside."""
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[: len(pieces)] = torch.tensor(
        [all(ch in chars or ch.isspace() or ch == "\ufffd" for ch in piece) for piece in pieces]
    )
    return mask
