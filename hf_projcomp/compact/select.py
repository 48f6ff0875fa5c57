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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..architectures import ffn_size, get_arch_spec
from ..evaluate import bits_per_byte
from ..export.verify import SPECIAL_TOKEN_FIX, special_token_mismatches
from ..hard_pruning import hard_prune
from ..importance import Scores, activation_importance, calibration_batches, top_k
from ..importance.calibration import iter_calibration_texts, read_tokens, token_sequences
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

    def with_intermediate_indices(self, intermediate_indices: list[torch.Tensor]) -> CompactSelection:
        """The same selection with other d_ff channels (and base down_proj values: a refit belongs to
        the channels it was fitted for)."""
        return replace(self, intermediate_indices=[torch.as_tensor(c) for c in intermediate_indices], down_proj=None)


def check_vocabularies(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    vocab = model.config.vocab_size
    if len(tokenizer) > vocab:
        raise ValueError(
            f"tokenizer has {len(tokenizer):,} tokens but the model's vocab_size is {vocab:,}: "
            "pass the tokenizer that belongs to this model"
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
    check_vocabularies(model, tokenizer)
    mismatches = special_token_mismatches(model.config, getattr(model, "generation_config", None), tokenizer)
    if mismatches:  # said now, not after the pruning, when save_compressed refuses the result
        logger.warning(
            "%s: the pruned model inherits this and save_compressed will refuse it; %s",
            "; ".join(mismatches),
            SPECIAL_TOKEN_FIX,
        )
    budget = None if config.split is not None else resolve_budget(model, config.target_params)
    heldout_tokens = config.heldout_tokens

    # One token stream: held-out tail for choosing the split, the rest for statistics. Texts past
    # what it needs are never read (a streamed dataset may be endless).
    texts, stream = read_tokens(
        tokenizer,
        iter_calibration_texts(calibration_data, config.text_column),
        config.frequency_tokens + heldout_tokens,
        progress=progress,
    )
    bos = tokenizer.bos_token_id
    stream = torch.tensor(([bos] if bos is not None else []) + stream, dtype=torch.long)
    if len(stream) < 2 * heldout_tokens:
        heldout_tokens = len(stream) // 4
    counted, heldout = stream[: len(stream) - heldout_tokens], stream[len(stream) - heldout_tokens :]
    heldout_text = tokenizer.decode(heldout, skip_special_tokens=True)
    counts = torch.bincount(counted, minlength=model.config.vocab_size)[: model.config.vocab_size]

    prune_vocabulary = config.prune_vocabulary
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
    if config.split is not None:
        vocab, inter = config.split
        if not min_vocab <= vocab <= model.config.vocab_size or not 0 < inter <= base_ffn:
            raise ValueError(
                f"split must be (vocab_size in [{min_vocab}, {model.config.vocab_size}], intermediate_size in "
                f"[1, {base_ffn}]), got {config.split}"
            )
        splits = [Split(vocab, inter, count_target_parameters(model, model.config.hidden_size, inter, vocab))]
    else:
        splits = candidate_splits(
            model, budget, min_vocab, config.ffn_fractions if prune_vocabulary else (), max_mixed=MAX_MIXED_CANDIDATES
        )
    if not splits:
        kept = "required tokens" if prune_vocabulary else "tokens of the unpruned vocabulary"
        raise ValueError(
            f"target_params={config.target_params} ({budget:,} parameters) cannot be reached: it leaves no room for "
            f"the {min_vocab:,} {kept} and at least one FFN channel per layer"
        )

    # Common act²: positions whose token falls outside the smallest candidate vocabulary (ranked by
    # calibration counts; the activation pass comes before the final ranking, which also uses it).
    kept_mask = torch.ones(model.config.vocab_size)
    smallest = min(s.vocab_size for s in splits)
    if smallest < model.config.vocab_size:
        kept_mask.zero_()
        kept_mask[token_ranking(counts)[:smallest]] = 1.0
    rare_next = counts <= RARE_NEXT_COUNT

    predicted_mass = torch.zeros(model.config.vocab_size, dtype=torch.float64) if prune_vocabulary else None
    refit = config.refit_ffn and min(s.intermediate_size for s in splits) < base_ffn
    if refit and spec.experts:
        logger.info("refit_ffn: the down_proj refit is for dense FFNs; skipped for this mixture of experts")
        refit = False
    # Float32 Gram matrices on the model's device: 0.3 GB for Gemma-3-270M, 2.3 GB for Qwen2.5-0.5B.
    grams = torch.zeros(model.config.num_hidden_layers, base_ffn, base_ffn, device=model.device) if refit else None
    # From the counted part only: the held-out tail judges the splits, so no statistic may have seen it.
    sequences = token_sequences(
        counted[1 if bos is not None else 0 :].tolist(), bos, config.num_sequences, config.sequence_length
    )
    activation_tokens = sum(s.numel() for s in sequences)
    scores = activation_importance(
        model,
        spec,
        calibration_batches(sequences),
        power=2,
        progress=progress,
        predicted_mass=predicted_mass,
        token_weight=lambda ids: kept_mask.to(ids.device)[ids],
        mass_weight=lambda nxt: rare_next.to(nxt.device)[nxt],
        ffn_gram=grams,
    )

    in_alphabet = None
    floors = (
        [frequent_characters(tokenizer, config.keep_characters)] if prune_vocabulary and config.keep_characters else []
    )
    prior = None
    if prune_vocabulary:
        pieces, chars = token_texts(tokenizer), character_counts(texts)  # decoding 262k ids takes seconds
        chars -= character_counts([heldout_text])  # the held-out tail's characters are not "seen"
        in_alphabet = alphabet_mask(pieces, chars, model.config.vocab_size)
        if config.keep_script_letters:
            floors.append(script_letters(pieces, chars))
        if config.vocab_prior:
            prior = rank_prior(pieces, chars, model.config.vocab_size)
    floor = torch.cat(floors).unique() if floors else None
    ranking = token_ranking(
        counts,
        predicted_mass,
        config.prior_weight,
        in_alphabet,
        seen_once=floor,
        rank_prior=prior,
        rank_prior_weight=config.vocab_prior,
    )
    ranking = ranking[ranking < len(tokenizer)].tolist()
    pruned = {
        s.vocab_size: pruner.prune(ranking, max_vocab_size=s.vocab_size)
        if s.vocab_size < model.config.vocab_size
        else (tokenizer, None)
        for s in splits
    }

    hidden = list(range(model.config.hidden_size))
    results: dict[tuple[int, int], float] = {}
    best: tuple | None = None
    for candidate in splits:
        small_tok, kept_ids = pruned[candidate.vocab_size]
        ffn = [top_k(layer, candidate.intermediate_size) for layer in scores.ffn]
        fitted = grams is not None and candidate.intermediate_size < base_ffn
        down_proj = refit_down_proj(model, spec, grams, ffn) if fitted else None
        bpb = float("nan")
        if len(splits) > 1:  # one split needs no score, so no model either
            small = hard_prune(model, hidden, ffn, kept_ids)
            if down_proj is not None:
                load_down_proj(small, spec, down_proj)
            bpb = bits_per_byte(small, small_tok, heldout_text, progress=False)
            del small
        vocab_size = candidate.vocab_size if kept_ids is None else len(kept_ids)
        results[(vocab_size, candidate.intermediate_size)] = bpb
        logger.info(
            "candidate vocab %d, d_ff %d: %.4f bits/byte on held-out calibration text",
            vocab_size,
            candidate.intermediate_size,
            bpb,
        )
        if best is None or bpb < best[0]:
            best = (bpb, candidate, small_tok, kept_ids, ffn, down_proj)
    _, chosen, small_tok, kept_ids, ffn, down_proj = best
    return CompactSelection(
        config, chosen, results, len(counted), activation_tokens, kept_ids, ffn, scores, small_tok, down_proj
    )


__all__ = ["CompactSelection", "compact_select"]
