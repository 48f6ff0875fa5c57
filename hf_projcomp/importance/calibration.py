"""Calibration input in the shapes users have: token-id batches, or text to tokenise.

Text comes from a ``datasets.Dataset`` or streamed ``IterableDataset`` (``text`` column), a
``.txt``/``.jsonl`` file, or a list of strings, and is read lazily: a stream is read only as far as
the token budget needs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from ..blocks import cut_blocks, text_blocks
from ..blocks import read_tokens as read_tokens  # its home before blocks.py: still importable from here

Batch = dict[str, torch.Tensor]

# Text given for activation importance becomes this many sequences of this many tokens.
DEFAULT_NUM_SEQUENCES = 32
DEFAULT_SEQUENCE_LENGTH = 512
# A .txt file is read in blocks of about this many characters, each ending at a blank line (or the end).
_TEXT_BLOCK_CHARS = 1 << 20


def _is_dataset(data: Any) -> bool:
    return hasattr(data, "column_names") and hasattr(data, "__iter__") and not isinstance(data, (str, bytes))


def _first_row(data: Any) -> Any:
    return next(iter(data), None)


def is_text(data: Any, text_column: str = "text") -> bool:
    """Whether calibration ``data`` is text (to tokenise) rather than token ids."""
    if isinstance(data, (str, os.PathLike)):
        return True
    if _is_dataset(data):
        columns = data.column_names
        if columns is None:  # IterableDataset.from_generator without features: look at a row
            row = _first_row(data)
            columns = list(row) if isinstance(row, dict) else []
        return "input_ids" not in columns and text_column in columns
    if isinstance(data, (list, tuple)):
        return bool(data) and isinstance(data[0], str)
    return False


def _read_text_file(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        pending = ""
        while True:
            block = f.read(_TEXT_BLOCK_CHARS)
            if not block:
                break
            pending += block
            cut = pending.rfind("\n\n")
            if cut >= 0:  # a blank line separates paragraphs: no token spans it
                yield pending[: cut + 2]
                pending = pending[cut + 2 :]
        if pending:
            yield pending


def iter_calibration_texts(data: Any, text_column: str = "text", *, name: str = "calibration_data") -> Iterator[str]:
    """Non-empty texts of ``data``, lazily: a ``datasets.Dataset``/``IterableDataset`` (``text_column``),
    a ``.txt`` file (in blocks that end at blank lines), a ``.jsonl`` file (``text_column`` of each
    line), or an iterable of strings. Errors call ``data`` by ``name`` (the caller's parameter)."""
    if data is None:
        raise ValueError(f"{name} is required")
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        try:
            found = path.is_file()
        except OSError:  # raw text passed as a string: too long (or too odd) to be a file name
            found = False
        if not found:
            shown = str(path) if len(str(path)) <= 80 else str(path)[:77] + "..."
            raise ValueError(f"{name} file {shown!r} does not exist (pass a list of strings for raw text)")
        texts: Iterable[str]
        if path.suffix in (".jsonl", ".json"):
            texts = (json.loads(line)[text_column] for line in path.open(encoding="utf-8") if line.strip())
        else:
            texts = _read_text_file(path)
    elif _is_dataset(data):
        texts = (_column(row, text_column, name) for row in data)
    elif isinstance(data, Iterable) and not isinstance(data, (bytes, dict)):
        texts = data
    else:
        raise TypeError(
            f"{name} must be a datasets.Dataset or IterableDataset, a path to a .txt/.jsonl file, or a "
            f"list of strings; got {type(data).__name__}"
        )
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"{name} must hold strings, got {type(text).__name__}")
        if text.strip():
            yield text


def _column(row: Any, column: str, name: str = "calibration_data") -> Any:
    if not isinstance(row, dict) or column not in row:
        found = list(row) if isinstance(row, dict) else type(row).__name__
        raise ValueError(f"{name} rows have no {column!r} column (found {found})")
    return row[column]


def _check_sequences(num_sequences: int, sequence_length: int) -> None:
    if num_sequences < 1 or sequence_length < 2:
        raise ValueError(
            f"num_sequences must be >= 1 and sequence_length >= 2, got {num_sequences} and {sequence_length}"
        )


def token_sequences(stream: list[int], bos: int | None, num_sequences: int, sequence_length: int) -> list[torch.Tensor]:
    """Up to ``num_sequences`` sequences of ``sequence_length`` tokens cut from the start of ``stream``,
    each starting with ``bos`` when given (as the model saw in training); a short stream gives one
    shorter sequence."""
    _check_sequences(num_sequences, sequence_length)
    blocks = cut_blocks(stream, sequence_length, bos, max_blocks=num_sequences, keep_short=True)
    return [torch.tensor([block]) for block in blocks]


def tokenize_calibration(
    tokenizer: Any,
    data: Any,
    num_sequences: int = DEFAULT_NUM_SEQUENCES,
    sequence_length: int = DEFAULT_SEQUENCE_LENGTH,
    progress: bool = True,
    text_column: str = "text",
) -> list[torch.Tensor]:
    """Token sequences (1, ``sequence_length``) from calibration text (any form
    :func:`iter_calibration_texts` takes), reading only the text they need."""
    _check_sequences(num_sequences, sequence_length)
    texts = data if isinstance(data, Iterator) else iter_calibration_texts(data, text_column)
    blocks = text_blocks(
        tokenizer,
        texts,
        sequence_length,
        bos=tokenizer.bos_token_id,
        max_blocks=num_sequences,
        keep_short=True,
        progress=progress,
        desc="Tokenising calibration text",
        name="calibration_data",
    )
    return [torch.tensor([block]) for block in blocks]


def _as_batch(item: Any) -> Batch:
    if isinstance(item, dict) or hasattr(item, "keys"):
        ids = torch.as_tensor(item["input_ids"], dtype=torch.long)
        mask = item.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask, dtype=torch.long)
    else:
        ids = torch.as_tensor(item, dtype=torch.long)
        mask = torch.ones_like(ids)
    if ids.dim() == 1:
        ids, mask = ids.unsqueeze(0), mask.reshape(1, -1)
    if ids.dim() != 2 or ids.shape != mask.shape or ids.numel() == 0:
        raise ValueError(
            "calibration_data batches must be non-empty token ids of shape (batch, seq) or (seq,), "
            f"with a matching attention_mask; got input_ids of shape {tuple(ids.shape)}"
        )
    return {"input_ids": ids, "attention_mask": mask}


def _padded(rows: list[Any]) -> Batch:
    width = max(len(r) for r in rows)
    # Right padding, masked out of every statistic.
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _dataset_batches(dataset: Any, batch_size: int, limit: int | None) -> Iterator[Batch]:
    rows: Iterator[Any] = (_column(row, "input_ids") for row in dataset)
    if limit is not None:
        rows = islice(rows, limit)
    while chunk := list(islice(rows, batch_size)):
        yield _padded(chunk)


def calibration_batches(
    data: Any,
    batch_size: int = 8,
    *,
    tokenizer: Any = None,
    num_sequences: int | None = None,
    sequence_length: int = DEFAULT_SEQUENCE_LENGTH,
    progress: bool = False,
) -> list[Batch]:
    """Normalise calibration data to a list of ``{"input_ids", "attention_mask"}`` batches.

    Token ids: a ``datasets.Dataset``/``IterableDataset`` with an ``input_ids`` column, a tensor of
    shape (batch, seq) or (seq,), or an iterable of such tensors / lists of ids / dicts with
    ``input_ids``. Text (see :func:`iter_calibration_texts`) is tokenised with ``tokenizer`` into
    ``num_sequences`` sequences of ``sequence_length`` tokens (default :data:`DEFAULT_NUM_SEQUENCES`).
    A streamed dataset is read only up to ``num_sequences`` rows (default :data:`DEFAULT_NUM_SEQUENCES`);
    other token inputs are used whole unless ``num_sequences`` is given.
    """
    if data is None:
        raise ValueError("calibration_data is required for data-driven importance")
    if is_text(data):
        if tokenizer is None:
            raise TypeError("calibration_data is text: pass tokenizer=... to tokenise it (or pass token ids)")
        sequences = tokenize_calibration(
            tokenizer, data, num_sequences or DEFAULT_NUM_SEQUENCES, sequence_length, progress=progress
        )
        return [_as_batch(torch.cat(sequences[i : i + batch_size])) for i in range(0, len(sequences), batch_size)]
    if _is_dataset(data):
        streamed = not hasattr(data, "__len__")
        limit = num_sequences or (DEFAULT_NUM_SEQUENCES if streamed else None)
        batches = list(_dataset_batches(data, batch_size, limit))
    elif isinstance(data, torch.Tensor):
        batches = [_as_batch(data)]
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        items = list(data)
        # A flat list of ints is one sequence, not many batches.
        if items and all(isinstance(x, int) for x in items):
            items = [items]
        batches = [_as_batch(item) for item in items[:num_sequences]]
    else:
        raise TypeError(
            "calibration_data must be a datasets.Dataset, a tensor, an iterable of token-id batches, or text "
            f"with tokenizer=...; got {type(data).__name__}"
        )
    if not batches:
        raise ValueError("calibration_data is empty")
    return batches
