"""Loading a base model and its tokenizer: a Hub id, a local directory, a GGUF file, or the offline demo."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .io import looks_like_path

# What the demo extra's GGUF (Q4_K_M, dequantized) was made from, and the file marking its cache.
DEMO_BASE = "google/gemma-3-270m"
DEMO_MARKER = "hf_projcomp_demo.json"

DTYPES = ("auto", "float32", "bfloat16", "float16")


class ModelLoadError(OSError):
    """The model or tokenizer named by the user could not be loaded (missing path, unknown repo...)."""


def hub_id_of(name_or_path: str | os.PathLike[str] | None) -> str | None:
    """The Hub id a model was loaded from: the name itself when it is not a local directory, the repo of
    a Hugging Face cache snapshot (``.../models--org--name/snapshots/<rev>``), the demo's
    ``google/gemma-3-270m``; None for another local directory."""
    if not name_or_path:
        return None
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return os.fspath(name_or_path)
    if (path / DEMO_MARKER).is_file():
        return DEMO_BASE
    parts = path.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return None


def resolve_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype:
    """``torch.dtype`` or ``"auto"`` (the checkpoint's own dtype) from a name; ``ValueError`` otherwise."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or "auto"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES} or a torch.dtype, got {dtype!r}")
    return dtype if dtype == "auto" else getattr(torch, dtype)


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

        return load_demo_model(dtype=torch.float32 if dtype == "auto" else dtype)
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
