"""``save_compressed``: a complete, verified checkpoint directory, written atomically."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from ..io import atomic_directory
from ..vocab.files import save_tokenizer
from .card import CompressionSummary, render_model_card
from .verify import verify_checkpoint

logger = logging.getLogger(__name__)


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
    """Write ``model`` (config, safetensors, generation_config), ``tokenizer`` (with consistent side files
    such as ``tokenizer.model``, see :mod:`hf_projcomp.vocab.files`) and a README model card.

    Everything goes into a temporary sibling directory first; the result is reloaded there with plain
    transformers and checked against ``model`` and ``tokenizer`` (:func:`verify_checkpoint`: logits
    within ``atol``, tokenizer, special tokens against the configs, dtype, tied head) before it is
    renamed to ``out_dir``. An interrupted or failed save leaves no ``out_dir`` behind (an existing one
    is only replaced with ``overwrite=True``, after verification).

    Returns:
        The output directory.
    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        VerificationError: the written files do not reproduce the model.
    """
    out = Path(out_dir).resolve()
    with atomic_directory(out, overwrite=overwrite) as tmp:
        write_checkpoint(model, tokenizer, tmp, summary, repo_id, local_name=out.name)
        verify_checkpoint(model, tokenizer, tmp, atol=atol)
    logger.info("saved and verified %s", out)
    return out


def write_checkpoint(
    model: PreTrainedModel,
    tokenizer: Any,
    directory: Path,
    summary: CompressionSummary | None,
    repo_id: str | None,
    local_name: str | None = None,
) -> None:
    model.save_pretrained(directory)
    save_tokenizer(tokenizer, directory)
    if summary is not None:
        render_model_card(summary, repo_id, local_name=local_name).save(directory / "README.md")
