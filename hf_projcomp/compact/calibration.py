"""Calibration text when the user has none: samples from the model itself."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList


class _Ticker(LogitsProcessor):
    """Moves a progress bar by one token per sequence at every generation step."""

    def __init__(self, bar: Any, sequences: int) -> None:
        self.bar, self.sequences = bar, sequences

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.bar.update(self.sequences)
        return scores


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
        raise ValueError(
            "the tokenizer has neither a BOS nor an EOS token to start sampling from: pass calibration text"
        )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    texts = []
    batch = 8
    with tqdm(
        total=num_samples * max_new_tokens, desc="Sampling calibration text", unit="tok", disable=not progress
    ) as bar:
        try:
            for first in range(0, num_samples, batch):
                n = min(batch, num_samples - first)
                start = torch.full((n, 1), start_id, device=model.device)
                out = model.generate(
                    start,
                    attention_mask=torch.ones_like(start),
                    do_sample=True,
                    top_k=50,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=start_id,
                    logits_processor=LogitsProcessorList([_Ticker(bar, n)]),
                )
                texts += tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True)
                bar.update((first + n) * max_new_tokens - bar.n)  # a batch that stopped early counts whole
        finally:
            torch.random.set_rng_state(generator_state)
    return [t for t in texts if t.strip()]
