"""``save_compressed``: a complete, verified checkpoint directory, written atomically."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .card import CompressionSummary, render_model_card

logger = logging.getLogger(__name__)
PROBE_TEXT = "The quick brown fox jumps over the lazy dog. 1, 2, 3: ünïcödé and emoji 🦊."


class VerificationError(RuntimeError):
    """The written checkpoint does not reproduce the in-memory model."""


def save_compressed(
    model: PreTrainedModel,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    summary: CompressionSummary | None = None,
    *,
    repo_id: str | None = None,
    overwrite: bool = False,
    atol: float = 1e-4,
) -> Path:
    """Write ``model`` (config, safetensors, generation_config), ``tokenizer`` and a README model card.

    Everything goes into a temporary sibling directory first; the result is reloaded there with
    plain transformers and its logits on a probe text compared with ``model``'s (``atol``, relative to
    the logits' scale) before it is renamed to ``out_dir``. An interrupted or failed save leaves no
    ``out_dir`` behind (an existing one is only replaced with ``overwrite=True``, after verification).

    Returns:
        The output directory.
    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        VerificationError: the written files do not reproduce the model.
    """
    out = Path(out_dir).resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        write_checkpoint(model, tokenizer, tmp, summary, repo_id)
        verify_checkpoint(model, tokenizer, tmp, atol)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("saved and verified %s", out)
    return out


def write_checkpoint(
    model: PreTrainedModel, tokenizer: Any, directory: Path, summary: CompressionSummary | None, repo_id: str | None
) -> None:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if summary is not None:
        render_model_card(summary, repo_id).save(directory / "README.md")


@torch.no_grad()
def verify_checkpoint(model: PreTrainedModel, tokenizer: Any, directory: Path, atol: float = 1e-4) -> None:
    """Reload ``directory`` with plain transformers; ``VerificationError`` unless tokenizer and logits
    match the in-memory ones."""
    try:
        reloaded = AutoModelForCausalLM.from_pretrained(directory, dtype=model.dtype).to(model.device).eval()
        reloaded_tok = AutoTokenizer.from_pretrained(directory)
    except Exception as err:  # any load failure means the files are unusable
        raise VerificationError(f"the written checkpoint does not load: {err}") from err
    ids = tokenizer(PROBE_TEXT, return_tensors="pt").input_ids
    if reloaded_tok(PROBE_TEXT, return_tensors="pt").input_ids.tolist() != ids.tolist():
        raise VerificationError("the written tokenizer encodes the probe text differently")
    if int(ids.max()) >= reloaded.config.vocab_size:
        raise VerificationError(f"the tokenizer emits id {int(ids.max())} >= vocab_size {reloaded.config.vocab_size}")
    ids = ids.to(model.device)
    was_training = model.training
    model.eval()
    expected = model(input_ids=ids).logits.float()
    model.train(was_training)
    got = reloaded(input_ids=ids).logits.float()
    diff = (expected - got).abs().max().item()
    if not diff <= atol * max(1.0, expected.abs().max().item()):
        raise VerificationError(f"reloaded logits differ from the in-memory model's by {diff:.3g} (tolerance {atol:g})")
