"""COMPACT's selection (arXiv 2509.06836): what to keep, without building the final model.

1. Token frequencies over all calibration text (tokenising is cheap, so it reads far more text than
   the activation pass), averaged with the model's own predicted next-token distribution at the
   activation pass's positions whose next token is rare (it ranks plausible tokens the text never
   used), counted only for tokens written in characters the calibration text uses; the letters of
   the calibration text's scripts rank as if seen once (see ``ranking.py``). The kept vocabulary
   is the top of that ranking, made reachable through the BPE merges, plus every required token
   (specials, byte tokens).
2. FFN channels per layer ranked by **common act²**: ``Σ_t h_{t,j}²`` over calibration positions whose
   token is kept, with ``h`` the input of ``down_proj`` (the paper's formula); then, beyond the paper,
   each pruned layer's ``down_proj`` refitted by least squares on the same positions (``compensation.py``).
3. The budget is split between vocabulary and FFN by trying a few candidate splits that meet it and
   keeping the one with the lowest bits per byte on held-out calibration text (the paper picks the
   split by hand; this is our rule).

The selection carries the chosen candidate's refitted down_proj weights (float32, whatever the
base's dtype): :func:`~hf_projcomp.compact.build.compact_build` needs nothing else.

:func:`compact_select` runs five stages, each a function of its own: :func:`read_and_hold_out`
(one token stream, its tail held out), :func:`splits_to_try`, :func:`activation_pass` (common act²,
predicted mass and refit Gram matrices in one pass), :func:`vocabulary_ranking` and
:func:`score_and_pick`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..architectures import ArchSpec, ffn_size, get_arch_spec
from ..evaluate import bits_per_byte
from ..export.verify import SPECIAL_TOKEN_FIX, special_token_mismatches
from ..hard_pruning import hard_prune
from ..importance import ActivationStatistics, Scores, activation_statistics, calibration_batches, top_k
from ..blocks import read_tokens
from ..importance.calibration import iter_calibration_texts, token_sequences
from ..sizing import count_target_parameters
from ..vocab import VocabularyPruner, VocabularyPruningError
from .budget import Split, candidate_splits, resolve_budget
from .compensation import load_down_proj, refit_down_proj
from .config import CompactConfig
from .ranking import (
    RARE_NEXT_COUNT,
    alphabet_mask,
    character_counts,
    frequent_characters,
    rank_prior,
    script_letters,
    token_ranking,
    token_texts,
)

logger = logging.getLogger(__name__)

MAX_MIXED_CANDIDATES = 4  # each costs a tokenizer prune and a held-out evaluation

Vocabulary = tuple[PreTrainedTokenizerBase, torch.Tensor | None]  # a tokenizer and its kept ids (new id -> old id)


@dataclass
class CompactSelection:
    """What :func:`compact_select` chose: enough for :func:`~hf_projcomp.compact.compact_build` to
    build the pruned model, for model cards and for projected compression's initial selections."""

    config: CompactConfig
    split: Split
    candidates: dict[tuple[int, int], float]  # (vocab, d_ff) -> held-out bits per byte
    frequency_tokens: int
    activation_tokens: int
    kept_token_ids: torch.Tensor | None  # new id -> old id; None when the vocabulary is kept
    intermediate_indices: list[torch.Tensor]  # kept d_ff channels per layer
    scores: Scores  # the importance the selections came from (d_model ranking included)
    tokenizer: PreTrainedTokenizerBase  # the pruned tokenizer (the base's when the vocabulary is kept)
    down_proj: list[torch.Tensor] | None = None  # refitted down_proj weights per layer (float32); None: the base's


@dataclass
class CalibrationTokens:
    """The calibration text, read once: the part every statistic comes from and the held-out tail
    that scores the candidate splits (never counted, in the activation pass or in the alphabet)."""

    texts: list[str]  # the texts read, the held-out tail's included
    counted: torch.Tensor  # token ids for the statistics, the BOS first when the tokenizer has one
    heldout_text: str  # the held-out tail, decoded
    counts: torch.Tensor  # (vocab,) how often each id occurs in ``counted``
    bos: int | None  # the tokenizer's BOS id


@dataclass
class Candidate:
    """One split made concrete: what :func:`~hf_projcomp.compact.compact_build` would build for it,
    and its bits per byte on the held-out text (NaN when unscored)."""

    split: Split
    tokenizer: PreTrainedTokenizerBase
    kept_token_ids: torch.Tensor | None  # new id -> old id; None when the vocabulary is kept
    intermediate_indices: list[torch.Tensor]  # kept d_ff channels per layer
    down_proj: list[torch.Tensor] | None  # refitted down_proj weights per layer; None: the base's
    bits_per_byte: float = float("nan")

    @property
    def sizes(self) -> tuple[int, int]:
        """(vocabulary, d_ff) as built: the pruned tokenizer may keep fewer tokens than the split asks."""
        vocab = self.split.vocab_size if self.kept_token_ids is None else len(self.kept_token_ids)
        return vocab, self.split.intermediate_size


def check_vocabularies(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    vocab = model.config.vocab_size
    if len(tokenizer) > vocab:
        raise ValueError(
            f"tokenizer has {len(tokenizer):,} tokens but the model's vocab_size is {vocab:,}: "
            "pass the tokenizer that belongs to this model"
        )


def warn_special_token_mismatches(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Said before the pruning, not after it, when ``save_compressed`` refuses the result."""
    mismatches = special_token_mismatches(model.config, getattr(model, "generation_config", None), tokenizer)
    if mismatches:
        logger.warning(
            "%s: the pruned model inherits this and save_compressed will refuse it; %s",
            "; ".join(mismatches),
            SPECIAL_TOKEN_FIX,
        )


def resolve_config(config: CompactConfig | None, overrides: dict[str, Any]) -> CompactConfig:
    """``config`` (default ``CompactConfig()``) with keyword overrides of its fields."""
    if config is not None and not isinstance(config, CompactConfig):
        raise TypeError(
            f"config must be a CompactConfig, got {type(config).__name__}; pass the budget as target_params=..."
        )
    try:
        return replace(config, **overrides) if config is not None else CompactConfig(**overrides)
    except TypeError as err:
        if "unexpected keyword" not in str(err):
            raise
        raise TypeError(f"{err}; CompactConfig's fields: {', '.join(CompactConfig.__dataclass_fields__)}") from None


def read_and_hold_out(
    tokenizer: PreTrainedTokenizerBase,
    calibration_data: Any,
    config: CompactConfig,
    vocab_size: int,
    *,
    progress: bool = True,
) -> CalibrationTokens:
    """Stage 1: one token stream of ``frequency_tokens + heldout_tokens`` calibration tokens (texts past
    what it needs are never read: a streamed dataset may be endless), the BOS first; its last
    ``heldout_tokens`` (a quarter of a stream shorter than twice that) are held out."""
    heldout_tokens = config.heldout_tokens
    texts, ids = read_tokens(
        tokenizer,
        iter_calibration_texts(calibration_data, config.text_column),
        config.frequency_tokens + heldout_tokens,
        progress=progress,
    )
    bos = tokenizer.bos_token_id
    stream = torch.tensor(([bos] if bos is not None else []) + ids, dtype=torch.long)
    if len(stream) < 2 * heldout_tokens:
        heldout_tokens = len(stream) // 4
    counted, heldout = stream[: len(stream) - heldout_tokens], stream[len(stream) - heldout_tokens :]
    heldout_text = tokenizer.decode(heldout, skip_special_tokens=True)
    assert isinstance(heldout_text, str)  # one sequence of ids decodes to one string
    counts = torch.bincount(counted, minlength=vocab_size)[:vocab_size]
    return CalibrationTokens(texts, counted, heldout_text, counts, bos)


def vocabulary_pruner(tokenizer: PreTrainedTokenizerBase, config: CompactConfig) -> VocabularyPruner | None:
    """The pruner of ``tokenizer``'s vocabulary; None when ``config`` keeps the vocabulary or the
    tokenizer is of a kind it cannot prune (then with a warning: FFN channels only)."""
    if not config.prune_vocabulary:
        return None
    try:
        return VocabularyPruner(tokenizer)
    except VocabularyPruningError as err:
        logger.warning("%s; pruning FFN channels only", err)
        return None


def fixed_split(model: PreTrainedModel, split: tuple[int, int], min_vocab: int) -> Split:
    """``split`` (vocabulary, d_ff) checked against the model: at least ``min_vocab`` tokens, at most
    the model's, and between one channel and the model's d_ff."""
    vocab, inter = split
    vocab_size, base_ffn = model.config.vocab_size, ffn_size(model.config)
    if not min_vocab <= vocab <= vocab_size or not 0 < inter <= base_ffn:
        raise ValueError(
            f"split must be (vocab_size in [{min_vocab}, {vocab_size}], intermediate_size in "
            f"[1, {base_ffn}]), got {split}"
        )
    return Split(vocab, inter, count_target_parameters(model, model.config.hidden_size, inter, vocab))


def splits_to_try(
    model: PreTrainedModel, config: CompactConfig, pruner: VocabularyPruner | None, budget: int | None
) -> list[Split]:
    """Stage 2: ``config.split`` alone, or the candidate splits of ``budget`` parameters (from
    :func:`resolve_budget`; None only with ``config.split``) that keep the required tokens (all of
    them without a ``pruner``) and at least one FFN channel per layer; a ``ValueError`` when none does."""
    min_vocab = len(pruner.required_ids) if pruner is not None else model.config.vocab_size
    if config.split is not None:
        return [fixed_split(model, config.split, min_vocab)]
    if budget is None:
        raise ValueError("a parameter budget is needed when config.split is not given")
    fractions = config.ffn_fractions if pruner is not None else ()
    splits = candidate_splits(model, budget, min_vocab, fractions, max_mixed=MAX_MIXED_CANDIDATES)
    if not splits:
        kept = "required tokens" if pruner is not None else "tokens of the unpruned vocabulary"
        raise ValueError(
            f"target_params={config.target_params} ({budget:,} parameters) cannot be reached: it leaves no room for "
            f"the {min_vocab:,} {kept} and at least one FFN channel per layer"
        )
    return splits


def activation_sequences(calibration: CalibrationTokens, config: CompactConfig) -> list[torch.Tensor]:
    """The activation pass's sequences, cut from the counted part only: the held-out tail judges the
    splits, so no statistic may have seen it."""
    start = 1 if calibration.bos is not None else 0
    return token_sequences(
        calibration.counted[start:].tolist(), calibration.bos, config.num_sequences, config.sequence_length
    )


def common_token_mask(counts: torch.Tensor, splits: Sequence[Split]) -> torch.Tensor:
    """Per token id, the weight of its positions in common act²: 1.0 for the tokens of the smallest
    candidate vocabulary ranked by calibration counts alone (the activation pass comes before the
    final ranking, which reads it), 0.0 for the others; all ones when every split keeps them all."""
    vocab_size = len(counts)
    mask = torch.ones(vocab_size)
    smallest = min(s.vocab_size for s in splits)
    if smallest < vocab_size:
        mask.zero_()
        mask[token_ranking(counts)[:smallest]] = 1.0
    return mask


def refit_wanted(config: CompactConfig, spec: ArchSpec, splits: Sequence[Split], base_ffn: int) -> bool:
    """Whether the pass gathers the Gram matrices of the down_proj refit: asked for, some split prunes
    FFN channels, and the FFN is dense."""
    refit = config.refit_ffn and min(s.intermediate_size for s in splits) < base_ffn
    if refit and spec.experts:
        logger.info("refit_ffn: the down_proj refit is for dense FFNs; skipped for this mixture of experts")
        return False
    return refit


def activation_pass(
    model: PreTrainedModel,
    spec: ArchSpec,
    sequences: Sequence[torch.Tensor],
    counts: torch.Tensor,
    splits: Sequence[Split],
    config: CompactConfig,
    *,
    predict_mass: bool,
    progress: bool = True,
) -> ActivationStatistics:
    """Stage 3: common act² over ``sequences`` (positions weighted by :func:`common_token_mask`) and, in
    the same forward passes, the model's predicted next-token mass at positions whose next token is
    rare (when ``predict_mass``) and the refit's Gram matrices (when :func:`refit_wanted`)."""
    kept_mask = common_token_mask(counts, splits)
    rare_next = counts <= RARE_NEXT_COUNT
    return activation_statistics(
        model,
        spec,
        calibration_batches(sequences),
        power=2,
        token_weight=lambda ids: kept_mask.to(ids.device)[ids],
        predicted_mass=predict_mass,
        mass_weight=lambda nxt: rare_next.to(nxt.device)[nxt],
        ffn_gram=refit_wanted(config, spec, splits, ffn_size(model.config)),
        progress=progress,
    )


def vocabulary_ranking(
    tokenizer: PreTrainedTokenizerBase,
    calibration: CalibrationTokens,
    config: CompactConfig,
    predicted_mass: torch.Tensor | None,
) -> list[int]:
    """Stage 4: the tokenizer's ids, most worth keeping first (see ``ranking.py``): calibration counts
    and ``predicted_mass``, within the calibration alphabet (the held-out tail's characters are not
    "seen"), script letters and frequent characters floored to one sighting, the tokenizer's prior."""
    vocab_size = len(calibration.counts)
    floors = [frequent_characters(tokenizer, config.keep_characters)] if config.keep_characters else []
    pieces, chars = token_texts(tokenizer), character_counts(calibration.texts)  # decoding 262k ids takes seconds
    chars -= character_counts([calibration.heldout_text])
    in_alphabet = alphabet_mask(pieces, chars, vocab_size)
    if config.keep_script_letters:
        floors.append(script_letters(pieces, chars))
    prior = rank_prior(pieces, chars, vocab_size) if config.vocab_prior else None
    ranking = token_ranking(
        calibration.counts,
        predicted_mass,
        config.prior_weight,
        in_alphabet,
        seen_once=torch.cat(floors).unique() if floors else None,
        rank_prior=prior,
        rank_prior_weight=config.vocab_prior,
    )
    return ranking[ranking < len(tokenizer)].tolist()


def candidate_vocabularies(
    tokenizer: PreTrainedTokenizerBase,
    pruner: VocabularyPruner | None,
    ranking: list[int],
    splits: Sequence[Split],
    vocab_size: int,
) -> dict[int, Vocabulary]:
    """Per vocabulary size of the splits, the tokenizer pruned to the top of ``ranking``, with its kept
    ids; ``tokenizer`` itself and None for the whole vocabulary."""
    return {
        s.vocab_size: pruner.prune(ranking, max_vocab_size=s.vocab_size)
        if pruner is not None and s.vocab_size < vocab_size
        else (tokenizer, None)
        for s in splits
    }


def make_candidate(
    model: PreTrainedModel, spec: ArchSpec, split: Split, vocabulary: Vocabulary, stats: ActivationStatistics
) -> Candidate:
    """``split``'s top d_ff channels per layer by common act², with down_proj refitted to them when the
    pass gathered Gram matrices and the split drops channels."""
    ffn = [top_k(layer, split.intermediate_size) for layer in stats.scores.ffn]
    down_proj = None
    if stats.ffn_gram is not None and split.intermediate_size < ffn_size(model.config):
        down_proj = refit_down_proj(model, spec, stats.ffn_gram, ffn)
    return Candidate(split, vocabulary[0], vocabulary[1], ffn, down_proj)


def heldout_bits_per_byte(model: PreTrainedModel, spec: ArchSpec, candidate: Candidate, heldout_text: str) -> float:
    """Bits per byte of the pruned model ``candidate`` describes on the held-out text."""
    hidden = list(range(model.config.hidden_size))
    small = hard_prune(model, hidden, candidate.intermediate_indices, candidate.kept_token_ids)
    if candidate.down_proj is not None:
        load_down_proj(small, spec, candidate.down_proj)
    return bits_per_byte(small, candidate.tokenizer, heldout_text, progress=False)


def score_and_pick(
    model: PreTrainedModel,
    spec: ArchSpec,
    splits: Sequence[Split],
    vocabularies: dict[int, Vocabulary],
    stats: ActivationStatistics,
    heldout_text: str,
) -> tuple[Candidate, dict[tuple[int, int], float]]:
    """Stage 5: each split as a :class:`Candidate`, scored on the held-out text (one split needs no
    score, so no model either: NaN); the lowest bits per byte (the first of equals) and every score
    by (vocabulary, d_ff) as built."""
    results: dict[tuple[int, int], float] = {}
    best: Candidate | None = None
    for split in splits:
        candidate = make_candidate(model, spec, split, vocabularies[split.vocab_size], stats)
        if len(splits) > 1:
            candidate.bits_per_byte = heldout_bits_per_byte(model, spec, candidate, heldout_text)
        results[candidate.sizes] = candidate.bits_per_byte
        logger.info(
            "candidate vocab %d, d_ff %d: %.4f bits/byte on held-out calibration text",
            *candidate.sizes,
            candidate.bits_per_byte,
        )
        if best is None or candidate.bits_per_byte < best.bits_per_byte:
            best = candidate
    if best is None:
        raise ValueError("no split to score")
    return best, results


def compact_select(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    calibration_data: Any,
    config: CompactConfig | None = None,
    *,
    progress: bool = True,
    **kwargs: Any,
) -> CompactSelection:
    """Choose what COMPACT keeps of ``model`` and its tokenizer (see the module docstring).

    Args:
        model: a supported causal LM (see ``hf_projcomp.ARCHITECTURES``).
        tokenizer: its fast tokenizer; BPE with byte fallback or byte-level BPE for vocabulary pruning.
        calibration_data: a ``datasets.Dataset`` or streamed ``IterableDataset`` (its
            ``config.text_column``), a ``.txt``/``.jsonl`` path, or strings; read only as far as
            ``config.frequency_tokens`` needs.
        config: a :class:`CompactConfig` (default: its defaults).
        progress: show progress bars.
        **kwargs: fields of :class:`CompactConfig` overriding ``config``'s (``target_params=0.4``).
    """
    config = resolve_config(config, kwargs)
    spec = get_arch_spec(model.config)
    vocab_size = model.config.vocab_size
    check_vocabularies(model, tokenizer)
    warn_special_token_mismatches(model, tokenizer)
    budget = None if config.split is not None else resolve_budget(model, config.target_params)
    calibration = read_and_hold_out(tokenizer, calibration_data, config, vocab_size, progress=progress)
    pruner = vocabulary_pruner(tokenizer, config)
    splits = splits_to_try(model, config, pruner, budget)
    sequences = activation_sequences(calibration, config)
    stats = activation_pass(
        model, spec, sequences, calibration.counts, splits, config, predict_mass=pruner is not None, progress=progress
    )
    ranking = vocabulary_ranking(tokenizer, calibration, config, stats.predicted_mass) if pruner is not None else []
    vocabularies = candidate_vocabularies(tokenizer, pruner, ranking, splits, vocab_size)
    best, results = score_and_pick(model, spec, splits, vocabularies, stats, calibration.heldout_text)
    return CompactSelection(
        config=config,
        split=best.split,
        candidates=results,
        frequency_tokens=len(calibration.counted),
        activation_tokens=sum(s.numel() for s in sequences),
        kept_token_ids=best.kept_token_ids,
        intermediate_indices=best.intermediate_indices,
        scores=stats.scores,
        tokenizer=best.tokenizer,
        down_proj=best.down_proj,
    )


__all__ = [
    "CalibrationTokens",
    "Candidate",
    "CompactSelection",
    "activation_pass",
    "activation_sequences",
    "candidate_vocabularies",
    "common_token_mask",
    "compact_select",
    "read_and_hold_out",
    "score_and_pick",
    "splits_to_try",
    "vocabulary_ranking",
]
