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


@torch.no_grad()
def generate_calibration_texts(
    model: Any, tokenizer: Any, num_samples: int = 16, max_new_tokens: int = 256, seed: int = 0, progress: bool = True
) -> list[str]:
    """Texts sampled from the model itself (top-k 50, from BOS): calibration when the user has no data.

    Self-generated text reflects what the model already predicts well, which is what COMPACT's
    common-token statistics need; real text from the target domain is better when available.
    """
    if num_samples < 1 or max_new_tokens < 1:
        raise ValueError(f"num_samples and max_new_tokens must be >= 1, got {num_samples} and {max_new_tokens}")
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start_id is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start sampling from: pass calibration text")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    texts = []
    try:
        batch = 8
        for first in tqdm(range(0, num_samples, batch), desc="Sampling calibration text", disable=not progress):
            n = min(batch, num_samples - first)
            start = torch.full((n, 1), start_id, device=model.device)
            out = model.generate(start, attention_mask=torch.ones_like(start), do_sample=True, top_k=50,
                                 max_new_tokens=max_new_tokens, pad_token_id=start_id)
            texts += tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True)
    finally:
        torch.random.set_rng_state(generator_state)
    return [t for t in texts if t.strip()]
