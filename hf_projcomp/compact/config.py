"""``CompactConfig``: every setting of COMPACT's selection, one JSON-serialisable dataclass.

The measurements behind the defaults (dev figures and result files) are in ``docs/decisions.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

DEFAULT_FFN_FRACTIONS = (1.0, 0.9375, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25)
# Weight of the tokenizer's own frequency order in the vocabulary ranking (ranking.rank_prior).
# Chosen on dev text: docs/decisions.md#vocab-prior-weight
VOCAB_PRIOR_WEIGHT = 0.3


@dataclass
class CompactConfig:
    """Settings of :func:`~hf_projcomp.compact.compact_select` (and so of ``compact_prune``).

    Args:
        target_params: a fraction in (0, 1) of the model's parameters, or an absolute count; ignored
            when ``split`` is given.
        split: ``(vocab_size, intermediate_size)`` to skip the search of the budget's split.
        num_sequences, sequence_length: the activation pass (the expensive part: on 2 CPU cores about
            1.8 s per 512-token sequence of Gemma-3-270M). Its rare-token positions rank the unseen
            vocabulary, so more sequences keep more of it. The default 64 was chosen on dev text
            (``docs/decisions.md#num-sequences``); ``projcomp compress`` uses fewer, for time.
        frequency_tokens: how many calibration tokens to count for token frequencies.
        heldout_tokens: tokens at the end of the calibration text scoring the candidate splits (never
            counted for frequencies, the activation pass or the calibration alphabet).
        ffn_fractions: candidate FFN widths (fractions of the base d_ff, widest first); the vocabulary
            fills the rest. The first four that leave room for the required tokens are tried, plus an
            FFN-only candidate (whole vocabulary) when it fits.
        prior_weight: weight of the model's predicted token distribution against the counted one in
            the vocabulary ranking (0: counts only).
        vocab_prior: weight of the tokenizer's own frequency order (its ids, Zipf over the
            calibration text's scripts; :func:`~hf_projcomp.compact.ranking.rank_prior`) in the
            vocabulary ranking, against the counted distribution (weight 1); 0 turns it off. It keeps
            what little or one-domain calibration text never shows (see ``VOCAB_PRIOR_WEIGHT``).
        keep_script_letters: rank the single-letter tokens of the calibration text's scripts as if
            seen once, so served letters the calibration text lacks (ū, æ in names) do not fall
            back to byte tokens (see :func:`~hf_projcomp.compact.ranking.script_letters`).
        keep_characters: how many of the tokenizer's most frequent single-character tokens, of any
            script, also rank as if seen once; for served text in scripts the calibration text
            lacks (see :func:`~hf_projcomp.compact.ranking.frequent_characters`). 0 (default): none
            (``docs/decisions.md#keep-characters``).
        refit_ffn: refit each pruned layer's down_proj by least squares on the calibration
            activations to what the removed channels contributed (:mod:`~hf_projcomp.compact.compensation`;
            dense FFNs only). The config stays vanilla. On by default, chosen on dev text
            (``docs/decisions.md#refit-ffn``).
        prune_vocabulary: False keeps the vocabulary and prunes FFN channels only.
        text_column: the text column of a ``datasets`` calibration set.
    """

    target_params: float | int = 0.5
    split: tuple[int, int] | None = None
    num_sequences: int = 64
    sequence_length: int = 512
    frequency_tokens: int = 2_000_000
    heldout_tokens: int = 2048
    ffn_fractions: tuple[float, ...] = DEFAULT_FFN_FRACTIONS
    prior_weight: float = 1.0
    vocab_prior: float = VOCAB_PRIOR_WEIGHT
    keep_script_letters: bool = True
    keep_characters: int = 0
    refit_ffn: bool = True
    prune_vocabulary: bool = True
    text_column: str = "text"

    def __post_init__(self) -> None:
        self._check_budget()
        self._check_counts()
        self._check_weights()
        for name in ("keep_script_letters", "refit_ffn", "prune_vocabulary"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        self.ffn_fractions = _fractions(self.ffn_fractions)
        if not isinstance(self.text_column, str):
            raise TypeError(f"text_column must be a str, got {self.text_column!r}")

    def _check_budget(self) -> None:
        """``split`` as a tuple of two positive ints or, without it, ``target_params`` a number (checked
        against the model by ``resolve_budget``)."""
        if self.split is None:
            if isinstance(self.target_params, bool) or not isinstance(self.target_params, (int, float)):
                raise TypeError(f"target_params must be a float fraction or an int count, got {self.target_params!r}")
            return
        if (
            not isinstance(self.split, (tuple, list))
            or len(self.split) != 2
            or not all(_is_int(v) and v > 0 for v in self.split)
        ):
            raise ValueError(f"split must be (vocab_size, intermediate_size), two positive ints, got {self.split!r}")
        vocab, inter = self.split
        self.split = (vocab, inter)

    def _check_counts(self) -> None:
        for name, least in (
            ("num_sequences", 1),
            ("frequency_tokens", 1),
            ("heldout_tokens", 1),
            ("sequence_length", 2),
            ("keep_characters", 0),
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")

    def _check_weights(self) -> None:
        for name in ("prior_weight", "vocab_prior"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (tuples as lists), as the model card records them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompactConfig:
        """The inverse of :meth:`to_dict`; unknown keys are a ``ValueError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown CompactConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fractions(values: Any) -> tuple[float, ...]:
    """``ffn_fractions`` as a non-empty tuple of numbers in (0, 1]."""
    fractions = tuple(values)
    if not fractions or not all(
        isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1 for f in fractions
    ):
        raise ValueError(f"ffn_fractions must be fractions in (0, 1], got {values!r}")
    return fractions


__all__ = ["DEFAULT_FFN_FRACTIONS", "VOCAB_PRIOR_WEIGHT", "CompactConfig"]
