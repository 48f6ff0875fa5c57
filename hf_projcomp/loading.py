"""Loading a base model and its tokenizer: a Hub id, a local directory, a GGUF file, or the offline demo."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .io import looks_like_path
from .model_ids import DEMO_BASE, DTYPES, hub_id_of, resolve_dtype


class ModelLoadError(OSError):
    """The model or tokenizer named by the user could not be loaded (missing path, unknown repo...)."""


def load_model(
    name_or_path: str | os.PathLike[str] | None = None,
    gguf_file: str | None = None,
    dtype: str | torch.dtype | None = "auto",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model in eval mode, tokenizer) from a Hub id or local directory (``gguf_file``: a GGUF file in
    it), or the offline demo Gemma-3-270M when ``name_or_path`` is None.

    ``dtype``: ``"auto"`` (default) keeps the checkpoint's dtype, so compressed outputs keep it too;
    ``"float32"``/``"bfloat16"``/``"float16"`` or a ``torch.dtype`` converts. Raises
    :class:`ModelLoadError` (an ``OSError``) naming the model when it cannot be found or read.
    """
    dtype = resolve_dtype(dtype)
    if name_or_path is None:
        from .demo import load_demo_model

        return load_demo_model(dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32)
    name = os.fspath(name_or_path)
    if looks_like_path(name) and not Path(name).expanduser().exists():
        raise ModelLoadError(f"model path {name} does not exist")
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs).eval()
    except OSError as err:
        raise ModelLoadError(f"could not load model {name}: {str(err).strip().splitlines()[0]}") from err
    return model, tokenizer


__all__ = ["DEMO_BASE", "DTYPES", "ModelLoadError", "hub_id_of", "load_model", "resolve_dtype"]
