"""COMPACT (arXiv 2509.06836): training-free vocabulary + common-token FFN pruning to a parameter budget.

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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..architectures import ffn_size, get_arch_spec
from ..evaluate import bits_per_byte
from ..importance import Scores, activation_importance, calibration_batches, magnitude_importance, top_k
from ..importance.calibration import iter_calibration_texts, read_tokens, token_sequences
from ..plan import build_plan
from ..hard_pruning import hard_prune
from ..sizing import count_target_parameters
from ..vocab import VocabularyPruner, VocabularyPruningError
from .budget import Split, candidate_splits, resolve_budget
from .compensation import refit_down_proj
from .ranking import (
    RARE_NEXT_COUNT, alphabet_mask, character_counts, frequent_characters, rank_prior, script_letters, token_ranking,
    token_texts,
)

logger = logging.getLogger(__name__)

DEFAULT_FFN_FRACTIONS = (1.0, 0.9375, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25)
MAX_MIXED_CANDIDATES = 4  # each costs a tokenizer prune and a held-out evaluation
FFN_IMPORTANCE = ("common_act2", "act2", "magnitude")
# Weight of the tokenizer's own frequency order in the vocabulary ranking (ranking.rank_prior), chosen
# on dev text: Gemma-3 at 50%, vocabulary ranked with weight 0, 0.3, 1 and 3 under three calibration
# regimes (the bundled text, 128 and 16 of its paragraphs). Bits per byte against the base, in domain
# (the first 30,000 characters of the dev articles) / out of domain (Python source):
#   weight 0:   -0.041 / +0.271,  +0.005 / +0.477,  +0.047 / +0.493
#   weight 0.3: -0.035 / +0.072,  -0.028 / +0.078,  +0.004 / +0.057
#   weight 1:   -0.038 / +0.050,  -0.013 / +0.045,  +0.021 / +0.038
#   weight 3:   -0.001 / +0.041,  +0.020 / +0.043
# The rule: the best in-domain score among the weights that keep the out-of-domain loss under 0.1
# in every regime; 0 fails that, 0.3 beats 1 and 3 in domain. (End to end on the first 60,000 dev
# characters, weight 1 cost 0.015 in domain against weight 0: benchmarks/results/compact_gemma.md.)
VOCAB_PRIOR_WEIGHT = 0.3


@dataclass
class CompactResult:
    """What ``compact_prune`` chose, for model cards and benchmarks."""

    split: Split
    candidates: dict[tuple[int, int], float]  # (vocab, d_ff) -> held-out bits per byte
    frequency_tokens: int
    activation_tokens: int
    kept_token_ids: torch.Tensor | None  # new id -> old id; None when the vocabulary is kept
    intermediate_indices: list[torch.Tensor]  # kept d_ff channels per layer
    scores: Scores  # the importance the selections came from (d_model ranking included)


def check_vocabularies(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    vocab = model.config.vocab_size
    if len(tokenizer) > vocab:
        raise ValueError(
            f"tokenizer has {len(tokenizer):,} tokens but the model's vocab_size is {vocab:,}: "
            "pass the tokenizer that belongs to this model"
        )


def compact_prune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    calibration_data: Any,
    target_params: float | int = 0.5,
    *,
    num_sequences: int = 64,
    sequence_length: int = 512,
    frequency_tokens: int = 2_000_000,
    heldout_tokens: int = 2048,
    ffn_fractions: tuple[float, ...] = DEFAULT_FFN_FRACTIONS,
    split: tuple[int, int] | None = None,
    ffn_importance: str = "common_act2",
    prior_weight: float = 1.0,
    vocab_prior: float = VOCAB_PRIOR_WEIGHT,
    keep_script_letters: bool = True,
    keep_characters: int = 0,
    refit_ffn: bool = True,
    text_column: str = "text",
    prune_vocabulary: bool = True,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    return_result: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase] | tuple[PreTrainedModel, PreTrainedTokenizerBase, CompactResult]:
    """Prune ``model`` (and its tokenizer) to ``target_params`` without training.

    Args:
        model: a supported causal LM (see ``hf_projcomp.ARCHITECTURES``).
        tokenizer: its fast tokenizer; BPE with byte fallback or byte-level BPE for vocabulary pruning.
        calibration_data: a ``datasets.Dataset`` or streamed ``IterableDataset`` (``text_column``), a
            ``.txt``/``.jsonl`` path, or strings; read only as far as ``frequency_tokens`` needs.
        target_params: a fraction in (0, 1) of the model's parameters, or an absolute count.
        num_sequences, sequence_length: the activation pass (the expensive part: on 2 CPU cores about
            1.8 s per 512-token sequence of Gemma-3-270M). Its rare-token positions rank the unseen
            vocabulary, so more sequences keep more of it. Chosen on dev text (WikiText-2 validation
            after the bundled calibration text): Gemma-3 at 50% of parameters calibrated on that text
            scored 1.4583 bits per byte with 32 sequences and 1.4526 with 64
            (``benchmarks/results/cli_default.md``; ``projcomp compress`` uses fewer, for time).
        frequency_tokens: how many calibration tokens to count for token frequencies.
        heldout_tokens: tokens at the end of the calibration text scoring the candidate splits (never
            counted for frequencies, the activation pass or the calibration alphabet).
        ffn_fractions: candidate FFN widths (fractions of the base d_ff, widest first); the vocabulary
            fills the rest. The first four that leave room for the required tokens are tried, plus an
            FFN-only candidate (whole vocabulary) when it fits.
        split: ``(vocab_size, intermediate_size)`` to skip the search; ``target_params`` is then ignored.
        ffn_importance: ``"common_act2"`` (the paper's), ``"act2"`` (every position counts) or
            ``"magnitude"`` (weight norms, no activation pass); the latter two exist for baselines.
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
            lacks (see :func:`~hf_projcomp.compact.ranking.frequent_characters`). 0 (default): none.
        refit_ffn: refit each pruned layer's down_proj to the removed channels' contribution by least
            squares on the calibration activations (:mod:`~hf_projcomp.compact.compensation`; dense
            FFNs with an activation ranking only). The config stays vanilla. Chosen on dev text: at
            40% of Gemma-3-270M, +0.158 → +0.117 bits per byte over the base in domain, +0.493 →
            +0.472 on Python source (``benchmarks/results/ffn_refit_gemma.md``).
        prune_vocabulary: False keeps the vocabulary and prunes FFN channels only.
        dtype: dtype of the pruned model (default: the base model's).
        return_result: also return a :class:`CompactResult`.

    Returns:
        ``(model, tokenizer)``: a vanilla model of the base class and a standard tokenizer.
    """
    for name, flag in (("keep_script_letters", keep_script_letters), ("refit_ffn", refit_ffn)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    if isinstance(vocab_prior, bool) or not isinstance(vocab_prior, (int, float)) or not vocab_prior >= 0:
        raise ValueError(f"vocab_prior must be a number >= 0, got {vocab_prior!r}")
    if isinstance(keep_characters, bool) or not isinstance(keep_characters, int) or keep_characters < 0:
        raise ValueError(f"keep_characters must be an integer >= 0, got {keep_characters!r}")
    if ffn_importance not in FFN_IMPORTANCE:
        raise ValueError(f"ffn_importance must be one of {FFN_IMPORTANCE}, got {ffn_importance!r}")
    spec = get_arch_spec(model.config)
    check_vocabularies(model, tokenizer)
    budget = resolve_budget(model, target_params)

    # One token stream: held-out tail for choosing the split, the rest for statistics. Texts past
    # what it needs are never read (a streamed dataset may be endless).
    texts, stream = read_tokens(tokenizer, iter_calibration_texts(calibration_data, text_column),
                                frequency_tokens + heldout_tokens, progress=progress)
    bos = tokenizer.bos_token_id
    stream = torch.tensor(([bos] if bos is not None else []) + stream, dtype=torch.long)
    if len(stream) < 2 * heldout_tokens:
        heldout_tokens = len(stream) // 4
    counted, heldout = stream[: len(stream) - heldout_tokens], stream[len(stream) - heldout_tokens :]
    heldout_text = tokenizer.decode(heldout, skip_special_tokens=True)
    counts = torch.bincount(counted, minlength=model.config.vocab_size)[: model.config.vocab_size]

    required: set[int] = set()
    pruner = None
    if prune_vocabulary:
        try:
            pruner = VocabularyPruner(tokenizer)
            required = pruner.required_ids
        except VocabularyPruningError as err:
            logger.warning("%s; pruning FFN channels only", err)
            prune_vocabulary = False
    min_vocab = len(required) if prune_vocabulary else model.config.vocab_size
    base_ffn = ffn_size(model.config)
    if split is not None:
        vocab, inter = split
        if not min_vocab <= vocab <= model.config.vocab_size or not 0 < inter <= base_ffn:
            raise ValueError(
                f"split must be (vocab_size in [{min_vocab}, {model.config.vocab_size}], intermediate_size in "
                f"[1, {base_ffn}]), got {split}"
            )
        splits = [Split(vocab, inter, count_target_parameters(model, model.config.hidden_size, inter, vocab))]
    else:
        splits = candidate_splits(model, budget, min_vocab, ffn_fractions if prune_vocabulary else (),
                                  max_mixed=MAX_MIXED_CANDIDATES)
    if not splits:
        kept = "required tokens" if prune_vocabulary else "tokens of the unpruned vocabulary"
        raise ValueError(
            f"target_params={target_params} ({budget:,} parameters) cannot be reached: it leaves no room for the "
            f"{min_vocab:,} {kept} and at least one FFN channel per layer"
        )

    # Common act²: positions whose token falls outside the smallest candidate vocabulary (ranked by
    # calibration counts; the activation pass comes before the final ranking, which also uses it).
    kept_mask = torch.ones(model.config.vocab_size)
    smallest = min(s.vocab_size for s in splits)
    if smallest < model.config.vocab_size and ffn_importance == "common_act2":
        kept_mask.zero_()
        kept_mask[token_ranking(counts)[:smallest]] = 1.0
    rare_next = counts <= RARE_NEXT_COUNT
    activation_tokens = 0
    predicted_mass = torch.zeros(model.config.vocab_size, dtype=torch.float64) if prune_vocabulary else None
    refit = refit_ffn and ffn_importance != "magnitude" and min(s.intermediate_size for s in splits) < base_ffn
    if refit and spec.experts:
        logger.info("refit_ffn: the down_proj refit is for dense FFNs; skipped for this mixture of experts")
        refit = False
    # Float32 Gram matrices on the model's device: 0.3 GB for Gemma-3-270M, 2.3 GB for Qwen2.5-0.5B.
    grams = (torch.zeros(model.config.num_hidden_layers, base_ffn, base_ffn, device=model.device)
             if refit else None)
    if ffn_importance == "magnitude":
        scores = magnitude_importance(model, build_plan(model, spec, model.config.hidden_size))
        predicted_mass = None
    else:
        # From the counted part only: the held-out tail judges the splits, so no statistic may have seen it.
        sequences = token_sequences(counted[1 if bos is not None else 0 :].tolist(), bos, num_sequences, sequence_length)
        activation_tokens = sum(s.numel() for s in sequences)
        scores = activation_importance(
            model, spec, calibration_batches(sequences), power=2, progress=progress, predicted_mass=predicted_mass,
            token_weight=lambda ids: kept_mask.to(ids.device)[ids],
            mass_weight=lambda nxt: rare_next.to(nxt.device)[nxt], ffn_gram=grams,
        )

    in_alphabet = None
    floors = [frequent_characters(tokenizer, keep_characters)] if prune_vocabulary and keep_characters else []
    prior = None
    if prune_vocabulary and (predicted_mass is not None or keep_script_letters or vocab_prior):
        pieces, chars = token_texts(tokenizer), character_counts(texts)  # decoding 262k ids takes seconds
        chars -= character_counts([heldout_text])  # the held-out tail's characters are not "seen"
        if predicted_mass is not None:
            in_alphabet = alphabet_mask(pieces, chars, model.config.vocab_size)
        if keep_script_letters:
            floors.append(script_letters(pieces, chars))
        if vocab_prior:
            prior = rank_prior(pieces, chars, model.config.vocab_size)
    floor = torch.cat(floors).unique() if floors else None
    ranking = token_ranking(counts, predicted_mass, prior_weight, in_alphabet, seen_once=floor, rank_prior=prior,
                            rank_prior_weight=vocab_prior)
    ranking = ranking[ranking < len(tokenizer)].tolist()
    pruned = {
        s.vocab_size: pruner.prune(ranking, max_vocab_size=s.vocab_size)
        if s.vocab_size < model.config.vocab_size else (tokenizer, None)
        for s in splits
    }

    hidden = list(range(model.config.hidden_size))
    results: dict[tuple[int, int], float] = {}
    best: tuple | None = None
    for candidate in splits:
        small_tok, kept_ids = pruned[candidate.vocab_size]
        ffn = [top_k(layer, candidate.intermediate_size) for layer in scores.ffn]
        small = hard_prune(model, hidden, ffn, kept_ids, dtype=dtype)
        if grams is not None and candidate.intermediate_size < base_ffn:
            refit_down_proj(small, model, spec, grams, ffn)
        bpb = bits_per_byte(small, small_tok, heldout_text, progress=False) if len(splits) > 1 else float("nan")
        results[(small.config.vocab_size, candidate.intermediate_size)] = bpb
        logger.info("candidate vocab %d, d_ff %d: %.4f bits/byte on held-out calibration text",
                    small.config.vocab_size, candidate.intermediate_size, bpb)
        if best is None or bpb < best[0]:
            best = (bpb, candidate, small, small_tok, kept_ids, ffn)
    _, chosen, small, small_tok, kept_ids, ffn = best
    result = CompactResult(chosen, results, len(counted), activation_tokens, kept_ids, ffn, scores)
    return (small, small_tok, result) if return_result else (small, small_tok)
