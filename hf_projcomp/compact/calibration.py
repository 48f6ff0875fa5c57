"""Calibration text from what users have (a Dataset, a local file, strings), cut into token sequences."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm


def load_calibration_texts(data: Any, text_column: str = "text") -> list[str]:
    """Texts from a ``datasets.Dataset`` (``text_column``), a ``.txt``/``.jsonl`` file, or strings."""
    if data is None:
        raise ValueError("calibration_data is required")
    if hasattr(data, "column_names"):
        if text_column not in data.column_names:
            raise ValueError(f"calibration_data Dataset has no {text_column!r} column (has {data.column_names})")
        texts = list(data[text_column])
    elif isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_file():
            raise ValueError(f"calibration_data file {str(path)!r} does not exist (pass a list of strings for raw text)")
        if path.suffix in (".jsonl", ".json"):
            with path.open(encoding="utf-8") as f:
                texts = [json.loads(line)[text_column] for line in f if line.strip()]
        else:
            texts = [path.read_text(encoding="utf-8")]
    elif isinstance(data, Iterable):
        texts = list(data)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("calibration_data as a list must hold strings")
    else:
        raise TypeError(
            "calibration_data must be a datasets.Dataset, a path to a .txt/.jsonl file, or a list of strings; "
            f"got {type(data).__name__}"
        )
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("calibration_data is empty")
    return texts


def tokenize_calibration(
    tokenizer: Any, texts: list[str], num_sequences: int = 64, sequence_length: int = 512, progress: bool = True
) -> list[torch.Tensor]:
    """Token sequences of ``sequence_length`` from the concatenated texts (at most ``num_sequences``).

    Each sequence starts with BOS when the tokenizer has one, as the model saw in training. Texts are
    tokenised one by one until enough tokens are gathered, so a large corpus isn't tokenised whole.
    """
    if num_sequences < 1 or sequence_length < 2:
        raise ValueError(
            f"num_sequences must be >= 1 and sequence_length >= 2, got {num_sequences} and {sequence_length}"
        )
    bos = tokenizer.bos_token_id
    body = sequence_length - (bos is not None)
    needed = num_sequences * body
    stream: list[int] = []
    with tqdm(total=needed, desc="Tokenising calibration text", disable=not progress, unit="tok") as bar:
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            stream.extend(ids)
            bar.update(min(len(ids), needed - bar.n))
            if len(stream) >= needed:
                break
    chunks = [stream[i : i + body] for i in range(0, min(len(stream), needed), body)]
    chunks = [c for c in chunks if len(c) == body] or [stream[:body]]
    prefix = [bos] if bos is not None else []
    return [torch.tensor([prefix + c]) for c in chunks]
