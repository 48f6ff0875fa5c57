"""Language-model quality that stays comparable across tokenizers.

Token perplexity is meaningless once the vocabulary changes (a pruned tokenizer splits the same
text into more, easier tokens), so models are compared by **bits per byte**: the total negative
log-likelihood of a text, in bits, divided by the number of UTF-8 bytes of that text. Word
perplexity (nats per whitespace-separated word) is reported alongside for readability.

Protocol:

1. The whole text is tokenized once, without special tokens. If the tokenizer has a BOS token and
   normally adds it, the BOS token is placed at the very start.
2. The token stream is scored in **non-overlapping** windows; no window sees the previous one.
   Every forward pass holds at most ``window`` tokens and predicts its tokens 1..n-1.
3. BOS at window boundaries (``bos_each_window``, tokenizers with a BOS token only):

   * ``False`` (default; the protocol of ``benchmarks/README.md``, which every figure in
     ``benchmarks/results/`` follows unless it says "BOS each window"): the BOS-prefixed stream is
     cut into plain ``window``-token chunks; the first token of every chunk after the first is
     context only (its loss is never counted) and those chunks start without BOS.
   * ``True``: every pass is ``[BOS] + the next window - 1 text tokens``, so every text token is
     predicted exactly once, each window's first text token from BOS alone. Models trained to always
     see BOS at position 0 (Gemma) stay in distribution and score markedly fewer bits per byte,
     the gap being BOS-dependence rather than language modelling (figures:
     ``docs/decisions.md#bos-each-window``). Compare models only under one setting.

   Tokenizers without BOS always use plain chunks (there is no neutral token to prefix).
4. NLL is summed in nats over all predicted tokens, converted to bits and divided by the UTF-8
   byte count of the whole text.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = ["LatencyRatio", "bits_per_byte", "evaluate_text", "forward_latency_ratio", "load_text"]

# Rows of logits turned into log-probabilities at a time: a 262k vocabulary makes one
# 1024-token window ~1 GiB of fp32 logits, and log_softmax would double that.
_CE_CHUNK_ROWS = 256


@dataclass(frozen=True)
class _Score:
    nats: float
    predicted_tokens: int
    tokens: int


def _exp(x: float) -> float:
    # An untrained model can exceed exp's float range per word; report inf instead of raising.
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def load_text(path: str | os.PathLike[str], max_chars: int | None = None) -> str:
    """Read a UTF-8 text file, optionally keeping only its first ``max_chars`` characters.

    Newlines are translated like Python's default ``open`` (``\\r\\n`` -> ``\\n``); the reference
    numbers in this project were measured on text read that way.
    """
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be a positive integer or None, got {max_chars!r}")
    with open(path, encoding="utf-8") as f:
        return f.read() if max_chars is None else f.read(max_chars)


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer has a BOS token and puts it in front of text by itself."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    # Ask the tokenizer rather than trusting flags like `add_bos_token`, which not every
    # tokenizer class defines and which post-processors can override.
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def _tokenize(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], int | None]:
    """Token ids of the whole text (no special tokens) and the BOS id to prefix, if any."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return list(ids), (tokenizer.bos_token_id if _adds_bos(tokenizer) else None)


def _windows(ids: list[int], bos: int | None, window: int, bos_each_window: bool) -> Iterator[list[int]]:
    """Forward-pass inputs per the module protocol; every window predicts its tokens 1..n-1."""
    if bos is not None and bos_each_window:
        step = window - 1
        for start in range(0, len(ids), step):
            yield [bos, *ids[start : start + step]]
        return
    stream = ids if bos is None else [bos, *ids]
    for start in range(0, len(stream), window):
        chunk = stream[start : start + window]
        if len(chunk) >= 2:  # a lone trailing token has nothing to predict
            yield chunk


def _window_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> float:
    """Summed NLL (nats) of tokens 1..n-1 of every row, given logits for positions 0..n-2."""
    pred = logits[:, :-1].reshape(-1, logits.shape[-1])
    target = input_ids[:, 1:].reshape(-1)
    total = 0.0
    for i in range(0, pred.shape[0], _CE_CHUNK_ROWS):
        # fp32 for the softmax even when the model runs in bf16/fp16: the sum is over thousands
        # of tokens and half-precision log-probs drift visibly in the third digit of bpb.
        total += F.cross_entropy(
            pred[i : i + _CE_CHUNK_ROWS].float(), target[i : i + _CE_CHUNK_ROWS], reduction="sum"
        ).item()
    return total


def _device_of(model: torch.nn.Module) -> torch.device:
    """Where the inputs go: the model's ``device`` (transformers models have one), else its first parameter's."""
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def _score(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    window: int,
    batch_size: int,
    progress: bool,
    bos_each_window: bool,
) -> _Score:
    """Shared core of `bits_per_byte` and `evaluate_text`: one tokenization, one forward pass."""
    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty string")
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be an integer >= 2 (tokens per pass), got {window!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")

    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit and window > limit:  # learned positions (GPT-2) have no row past it; rotary ones were not trained there
        logger.info("window %d is past the model's max_position_embeddings; scoring in %d-token windows", window, limit)
        window = limit
    ids, bos = _tokenize(tokenizer, text)
    windows = list(_windows(ids, bos, window, bos_each_window))
    if not windows:
        raise ValueError("text is too short to score: it has no token that can be predicted")

    device = _device_of(model)
    was_training = model.training
    model.eval()
    nats = 0.0
    predicted = 0
    start = time.perf_counter()
    try:
        with (
            torch.inference_mode(),
            tqdm(total=len(windows), desc="bits/byte", unit="win", disable=not progress) as bar,
        ):
            i = 0
            while i < len(windows):
                # Only the last window can be shorter, so batching equal lengths needs no padding
                # (and no attention-mask semantics that differ between model families).
                batch = [windows[i]]
                while (
                    len(batch) < batch_size
                    and i + len(batch) < len(windows)
                    and len(windows[i + len(batch)]) == len(batch[0])
                ):
                    batch.append(windows[i + len(batch)])
                input_ids = torch.tensor(batch, dtype=torch.long, device=device)
                logits = model(input_ids=input_ids, use_cache=False).logits
                nats += _window_nll(logits, input_ids)
                predicted += input_ids.shape[0] * (input_ids.shape[1] - 1)
                i += len(batch)
                bar.update(len(batch))
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    logger.info(
        "Scored %d tokens in %d windows in %.1f s (%.0f tokens/s)",
        predicted,
        len(windows),
        seconds,
        predicted / max(seconds, 1e-9),
    )
    # Count BOS once, like the tokenizer's own encoding of the text would.
    return _Score(nats=nats, predicted_tokens=predicted, tokens=len(ids) + (bos is not None))


def bits_per_byte(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    window: int = 1024,
    batch_size: int = 1,
    progress: bool = True,
    *,
    bos_each_window: bool = False,
) -> float:
    """Total NLL of ``text`` in bits divided by its UTF-8 byte count (see the module protocol).

    ``window`` is the maximum number of tokens per forward pass (BOS included); ``batch_size``
    windows run together; ``bos_each_window`` picks the BOS handling at window boundaries (see
    the module docstring). Raises ValueError for empty text or ``window < 2``.
    """
    return evaluate_text(
        model,
        tokenizer,
        text,
        window=window,
        batch_size=batch_size,
        progress=progress,
        bos_each_window=bos_each_window,
    )["bits_per_byte"]


def evaluate_text(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    window: int = 1024,
    batch_size: int = 1,
    progress: bool = True,
    *,
    bos_each_window: bool = False,
) -> dict[str, float | int]:
    """Bits per byte, word perplexity and token perplexity of ``text`` from one forward pass.

    Returns a dict with ``bits_per_byte``, ``word_perplexity`` (exp of total nats per
    whitespace-separated word), ``token_perplexity`` (per predicted token), ``tokens`` (the
    text's tokens plus the leading BOS, if any), ``predicted_tokens``, ``bytes``, ``words`` and
    ``nats`` (total NLL). Arguments as in `bits_per_byte`.
    """
    score = _score(model, tokenizer, text, window, batch_size, progress, bos_each_window)
    n_bytes = len(text.encode("utf-8"))
    n_words = len(text.split())
    return {
        "bits_per_byte": score.nats / math.log(2) / n_bytes,
        # A whitespace-only text has no words; infinity says "undefined" without raising.
        "word_perplexity": _exp(score.nats / n_words) if n_words else math.inf,
        "token_perplexity": _exp(score.nats / score.predicted_tokens),
        "tokens": score.tokens,
        "predicted_tokens": score.predicted_tokens,
        "bytes": n_bytes,
        "words": n_words,
        "nats": score.nats,
    }


@dataclass(frozen=True)
class LatencyRatio:
    """A model's forward time over a base's, per alternating round: the median and the spread."""

    median: float
    low: float
    high: float
    rounds: int
    tokens: int


def forward_latency_ratio(
    model: torch.nn.Module,
    base: torch.nn.Module,
    vocab_size: int,
    base_vocab_size: int,
    tokens: int = 256,
    rounds: int = 7,
    clock: Callable[[], float] = time.perf_counter,
) -> LatencyRatio:
    """``model``'s forward time on ``tokens`` random tokens over ``base``'s, measured side by side: after
    one warm-up of each, ``rounds`` rounds of one forward each, alternating which goes first so that a
    drift in the machine's load falls on both; the median ratio and the lowest and highest of a round
    (a machine under other load shows as a wide spread)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (1, tokens), generator=generator)
    base_ids = torch.randint(0, base_vocab_size, (1, tokens), generator=generator)
    ratios = []
    with torch.no_grad():
        model(input_ids=ids)
        base(input_ids=base_ids)
        for i in range(rounds):
            pair = [(model, ids), (base, base_ids)]
            seconds = {}
            for net, inputs in pair if i % 2 == 0 else pair[::-1]:
                start = clock()
                net(input_ids=inputs)
                seconds[id(net)] = clock() - start
            ratios.append(seconds[id(model)] / seconds[id(base)])
    return LatencyRatio(statistics.median(ratios), min(ratios), max(ratios), rounds, tokens)
