"""The one reload-and-compare check every writer runs before it publishes a checkpoint directory."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedModel,
)

from ..target import SPECIAL_TOKEN_FIELDS
from ..vocab.files import PROBE_TEXTS, side_file_mismatches

# What to do about a special_token_mismatches finding (told by the verifier and, earlier, by COMPACT).
SPECIAL_TOKEN_FIX = (
    "make them agree before saving, e.g. model.config.pad_token_id = "
    "model.generation_config.pad_token_id = tokenizer.pad_token_id"
)


class VerificationError(RuntimeError):
    """The written checkpoint does not reproduce the in-memory model, or contradicts itself."""


def special_token_mismatches(config: PretrainedConfig, generation_config: Any, tokenizer: Any) -> list[str]:
    """Where ``config``/``generation_config`` and ``tokenizer`` name different special tokens.

    A config id must be the token the tokenizer names (``config.pad_token_id`` is
    ``tokenizer.pad_token``); an id list (several EOS ids) must contain it. Fields either side leaves
    unset are not compared.
    """
    problems = []
    for source, values in (("config", config), ("generation_config", generation_config)):
        for field in SPECIAL_TOKEN_FIELDS:  # those the tokenizer names (it has no decoder_start_token)
            token = getattr(tokenizer, field.removesuffix("_id"), None)
            value = getattr(values, field, None) if values is not None else None
            if token is None or value is None:
                continue
            ids = value if isinstance(value, (list, tuple)) else [value]
            names = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
            if str(token) not in names:
                problems.append(
                    f"{source}.{field} = {value} names {names}, but the tokenizer's "
                    f"{field.removesuffix('_id')} is {str(token)!r}"
                )
    return problems


def check_tokenizer(model_config: PretrainedConfig, generation_config: Any, tokenizer: Any, directory: Path) -> None:
    """``VerificationError`` unless the tokenizer fits the model: ids below ``vocab_size``, the same
    special tokens as the configs, and side files (``tokenizer.model``...) that agree with it."""
    problems = special_token_mismatches(model_config, generation_config, tokenizer)
    if problems:
        problems[-1] += f" ({SPECIAL_TOKEN_FIX})"
    problems += side_file_mismatches(directory, tokenizer)
    if len(tokenizer) > model_config.vocab_size:
        problems.append(f"the tokenizer has {len(tokenizer):,} tokens but vocab_size is {model_config.vocab_size:,}")
    if problems:
        raise VerificationError(f"{directory}: " + "; ".join(problems))


def check_checkpoint(directory: str | Path) -> None:
    """What a saved directory must satisfy on its own (no in-memory model to compare with): its config,
    generation config and tokenizer load, and the tokenizer fits them (:func:`check_tokenizer`).
    Weights are not loaded."""
    directory = Path(directory)
    try:
        config = AutoConfig.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        generation = (
            GenerationConfig.from_pretrained(directory) if (directory / "generation_config.json").is_file() else None
        )
    except Exception as err:  # any load failure means the files are unusable
        raise VerificationError(f"{directory} does not load: {err}") from err
    check_tokenizer(config, generation, tokenizer, directory)


def _tokenizer_state(tokenizer: Any, texts: Iterable[str]) -> dict[str, Any]:
    return {
        "size": len(tokenizer),
        "special_tokens": tokenizer.special_tokens_map,
        "extra_special_tokens": list(getattr(tokenizer, "extra_special_tokens", []) or []),
        "chat_template": tokenizer.chat_template,
        "ids": [tokenizer(t, add_special_tokens=s)["input_ids"] for t in texts for s in (True, False)],
        "decoded": [tokenizer.decode(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts],
    }


@torch.no_grad()
def verify_checkpoint(
    model: PreTrainedModel,
    tokenizer: Any,
    directory: str | Path,
    *,
    atol: float = 1e-4,
    texts: Iterable[str] = PROBE_TEXTS,
) -> None:
    """Reload ``directory`` with plain transformers and compare it with ``model`` and ``tokenizer``.

    ``VerificationError`` unless: the reloaded tokenizer has the same size, special tokens,
    chat template and encodings of ``texts`` (with and without special tokens); it fits the reloaded
    config (:func:`check_tokenizer`); the reloaded model has ``model``'s class, dtype and tied head;
    and its logits on ``texts`` match ``model``'s within ``atol`` relative to their scale.
    """
    directory = Path(directory)
    texts = list(texts)
    try:
        # PreTrainedModel.to is functools.wraps(Module.to), whose stub leaves it unbound (device read as self)
        reloaded = AutoModelForCausalLM.from_pretrained(directory).to(model.device).eval()  # type: ignore[arg-type]
        reloaded_tok = AutoTokenizer.from_pretrained(directory)
    except Exception as err:  # any load failure means the files are unusable
        raise VerificationError(f"the written checkpoint does not load: {err}") from err
    expected, got = _tokenizer_state(tokenizer, texts), _tokenizer_state(reloaded_tok, texts)
    for key in expected:
        if expected[key] != got[key]:
            detail = "" if key in ("ids", "decoded") else f": {expected[key]!r} in memory, {got[key]!r} reloaded"
            raise VerificationError(
                f"AutoTokenizer reloads the written tokenizer as a {type(reloaded_tok).__name__} "
                f"whose {key} differ{detail}"
            )
    check_tokenizer(reloaded.config, reloaded.generation_config, reloaded_tok, directory)
    if type(reloaded) is not type(model) or reloaded.dtype != model.dtype:
        raise VerificationError(
            f"the checkpoint reloads as {type(reloaded).__name__} in {reloaded.dtype}, "
            f"not {type(model).__name__} in {model.dtype}"
        )
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    if tied != (reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight):
        raise VerificationError(f"the checkpoint reloads with {'an untied' if tied else 'a tied'} LM head")
    was_training = model.training
    model.eval()
    try:
        for text in texts:
            ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)
            want = model(input_ids=ids).logits.float()
            have = reloaded(input_ids=ids).logits.float()
            diff = (want - have).abs().max().item()
            if not diff <= atol * max(1.0, want.abs().max().item()):
                raise VerificationError(
                    f"reloaded logits differ from the in-memory model's by {diff:.3g} (tolerance {atol:g})"
                )
    finally:
        model.train(was_training)


__all__ = ["VerificationError", "check_checkpoint", "check_tokenizer", "special_token_mismatches", "verify_checkpoint"]
