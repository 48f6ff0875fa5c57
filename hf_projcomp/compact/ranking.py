"""COMPACT's vocabulary ranking: which tokens a pruned vocabulary keeps first.

Counted calibration frequency plus the model's own predicted next-token mass where the text's next
token is rare, limited to the calibration text's characters, plus the tokenizer's own frequency
order (its ids) over the calibration text's scripts, with the letters of those scripts (and
optionally the tokenizer's most frequent characters) ranked as if seen once. ``compact_prune``
keeps the top of this ranking (see its module).
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
# Chosen on dev text: docs/decisions.md#rare-next-count
RARE_NEXT_COUNT = 10

# A script's letters rank as if seen once only when it writes this share of the calibration
# text's letters: a stray foreign name must not pull in a whole script (Gemma-3 holds thousands
# of single-ideograph tokens). Set by that reasoning, not by a score: docs/decisions.md#script-min-share
SCRIPT_MIN_SHARE = 1e-3

# The rank prior gives the token of rank r among those allowed 1 / (r + RANK_PRIOR_OFFSET) (Zipf's
# law over the tokenizer's frequency order; the offset flattens the head, where the counts decide).
RANK_PRIOR_OFFSET = 100.0


def token_ranking(
    counts: torch.Tensor,
    predicted_mass: torch.Tensor | None = None,
    prior_weight: float = 1.0,
    in_alphabet: torch.Tensor | None = None,
    seen_once: torch.Tensor | None = None,
    rank_prior: torch.Tensor | None = None,
    rank_prior_weight: float = 0.0,
) -> torch.Tensor:
    """Token ids, most likely first: counted unigram frequency plus ``prior_weight`` × the
    model-predicted one (the prediction ranks tokens the calibration text happened not to use, such
    as other forms of its words); ties by id (BPE ids roughly follow corpus frequency).

    ``in_alphabet`` (bool per id) limits the prediction to tokens written in the calibration text's
    characters: a multilingual model spreads mass over scripts the target text never uses. COMPACT
    passes it whenever it prunes the vocabulary, for text like the calibration text; the trade-off
    it makes in and out of domain is in ``docs/decisions.md#alphabet-mask``.

    ``seen_once`` (ids) score at least as a token counted once (see :func:`script_letters`).

    ``rank_prior`` (a distribution over ids, :func:`rank_prior`) adds ``rank_prior_weight`` × the
    tokenizer's own frequency order, which needs no calibration data at all.
    """
    total = max(1, int(counts.sum()))
    score = counts.double() / total
    if predicted_mass is not None:
        mass = predicted_mass.double()
        if in_alphabet is not None:
            mass = mass * in_alphabet.to(mass.dtype)
        score = score + prior_weight * mass / max(1e-12, float(mass.sum()))
    if rank_prior is not None and rank_prior_weight:
        score = score + rank_prior_weight * rank_prior.double() / max(1e-12, float(rank_prior.sum()))
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


def calibration_scripts(chars: Counter[str], min_share: float = SCRIPT_MIN_SHARE) -> set[str]:
    """The scripts that write at least ``min_share`` of the letters in ``chars``."""
    letters: Counter[str] = Counter()
    for ch, n in chars.items():
        if ch.isalpha():
            letters[_script(ch)] += n
    total = sum(letters.values())
    return {s for s, n in letters.items() if n >= min_share * total}


def rank_prior(
    pieces: list[str], chars: Counter[str], vocab_size: int, offset: float = RANK_PRIOR_OFFSET
) -> torch.Tensor:
    """The tokenizer's own unigram prior: BPE numbers its merges, and SentencePiece its pieces, in order
    of frequency in the tokenizer's training corpus, so the id order ranks tokens (code, names, word
    forms) that a calibration text never shows. Over the tokens whose letters all belong to the
    calibration text's scripts (``chars``: its character counts; tokens without letters included),
    the token of rank r gets 1 / (r + offset); the others 0. Normalised to sum 1.

    Its weight is ``VOCAB_PRIOR_WEIGHT`` in :mod:`hf_projcomp.compact.config`.
    """
    scripts = calibration_scripts(chars)
    allowed = torch.zeros(vocab_size, dtype=torch.bool)
    allowed[: len(pieces)] = torch.tensor(
        [all(not ch.isalpha() or _script(ch) in scripts for ch in piece) for piece in pieces]
    )
    ids = allowed.nonzero().squeeze(1)
    prior = torch.zeros(vocab_size, dtype=torch.float64)
    prior[ids] = 1.0 / (torch.arange(len(ids), dtype=torch.float64) + offset)
    return prior / prior.sum()


def script_letters(pieces: list[str], chars: Counter[str], min_share: float = SCRIPT_MIN_SHARE) -> torch.Tensor:
    """Ids of the single-letter tokens (``pieces`` from :func:`token_texts`) of every script that
    writes at least ``min_share`` of the letters in ``chars`` (calibration character counts).

    Calibration text never holds every letter of its own script that served text will (names
    such as Hyūga or Encyclopædia), and a letter the pruned vocabulary lacks falls back to
    byte tokens that the model hardly trained. Returns a 1-D ``long`` tensor of ids. On by default
    (``CompactConfig.keep_script_letters``) by that mechanism, not by a score:
    ``docs/decisions.md#keep-script-letters``.
    """
    scripts = calibration_scripts(chars, min_share)
    ids = [i for i, piece in enumerate(pieces) if len(piece) == 1 and piece.isalpha() and _script(piece) in scripts]
    return torch.tensor(ids, dtype=torch.long)


def frequent_characters(tokenizer: PreTrainedTokenizerBase, n: int) -> torch.Tensor:
    """Ids of the tokenizer's ``n`` first single-character tokens in id order, which BPE and
    SentencePiece assign by corpus frequency (Gemma-3: newline, '▁', e, t, a, ... then à at 195,
    æ at 801, ū at 1,435), whatever their script.

    For served text with characters outside the calibration text's scripts (see
    :func:`script_letters`); each takes the slot of a ranked token, so ``CompactConfig`` asks for
    none by default (``docs/decisions.md#keep-characters``). Returns a 1-D ``long`` tensor of ids.
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
