"""Reading and rewriting the BPE model inside a ``tokenizer.json`` document (plain dicts and lists).

Working on the serialised document instead of calling the tokenizer per token keeps pruning Gemma's
262,144-token vocabulary a matter of seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tokenizers import Tokenizer

TokenizerKind = Literal["byte_fallback", "byte_level"]


class VocabularyPruningError(ValueError):
    """The tokenizer (or the request) is outside what vocabulary pruning supports."""


@dataclass
class BPEDocument:
    """A parsed ``tokenizer.json`` with the facts pruning needs.

    ``id_to_token`` covers the model vocabulary and added tokens that live outside it; ``merges`` are
    (left, right) string pairs in rank order.
    """

    data: dict[str, Any]
    kind: TokenizerKind
    vocab: dict[str, int]
    merges: list[tuple[str, str]]
    id_to_token: dict[int, str]
    added: list[dict[str, Any]]

    @property
    def size(self) -> int:
        return len(self.id_to_token)


def backend_of(tokenizer: Any) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` behind a transformers fast tokenizer (or the object itself)."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise VocabularyPruningError(
            f"vocabulary pruning needs a fast (tokenizers-backed) tokenizer; {type(tokenizer).__name__} has none"
        )
    return backend


def read_document(tokenizer: Any) -> BPEDocument:
    """Parse the tokenizer's JSON and check that its kind is supported."""
    data = json.loads(backend_of(tokenizer).to_str())
    model = data.get("model") or {}
    kind = tokenizer_kind(data)
    vocab = model["vocab"]
    merges = [_merge_pair(m) for m in model.get("merges", [])]
    id_to_token = {i: t for t, i in vocab.items()}
    added = list(data.get("added_tokens") or [])
    for token in added:
        id_to_token.setdefault(token["id"], token["content"])
    return BPEDocument(data, kind, vocab, merges, id_to_token, added)


def _merge_pair(merge: str | list[str]) -> tuple[str, str]:
    """A merge as (left, right): older files write ``"a b"``, newer ones ``["a", "b"]``."""
    if isinstance(merge, str):
        left, right = merge.split(" ", 1)
        return left, right
    return merge[0], merge[1]


def tokenizer_kind(data: Mapping[str, Any]) -> TokenizerKind:
    """``"byte_fallback"`` or ``"byte_level"``; anything else raises :class:`VocabularyPruningError`.

    Only these two kinds can encode any text with a pruned vocabulary (bytes are always there), so
    only they are accepted.
    """
    model = data.get("model") or {}
    model_type = model.get("type")
    if model_type is None and "merges" in model:
        model_type = "BPE"  # very old files omit the type
    if model_type != "BPE":
        raise VocabularyPruningError(
            f"vocabulary pruning isn't supported for {model_type} tokenizers; supported kinds are BPE with "
            "byte_fallback (Llama-2/Mistral/Gemma style) and byte-level BPE (GPT-2/Llama-3/Qwen2 style)"
        )
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise VocabularyPruningError(
            "vocabulary pruning isn't supported for BPE tokenizers with a continuing_subword_prefix or "
            "end_of_word_suffix"
        )
    if model.get("byte_fallback"):
        return "byte_fallback"
    if _has_component(data.get("pre_tokenizer"), "ByteLevel"):
        return "byte_level"
    raise VocabularyPruningError(
        "vocabulary pruning isn't supported for BPE tokenizers without byte_fallback and without a ByteLevel "
        "pre-tokenizer: text using a removed token could no longer be encoded"
    )


def _has_component(node: Any, type_name: str) -> bool:
    if isinstance(node, dict):
        if node.get("type") == type_name:
            return True
        return any(_has_component(v, type_name) for v in node.values())
    if isinstance(node, list):
        return any(_has_component(v, type_name) for v in node)
    return False


def post_processor_tokens(data: Mapping[str, Any]) -> set[str]:
    """Token strings the post-processor inserts (template special tokens, cls/sep)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("tokens"), list) and isinstance(node.get("ids"), list):
                found.update(node["tokens"])
            for key in ("cls", "sep"):
                value = node.get(key)
                if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                    found.add(value[0])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(data.get("post_processor"))
    return found


def config_strings(data: Mapping[str, Any]) -> set[str]:
    """Literal strings the normalizer, pre-tokenizer and decoder insert or match (e.g. '▁')."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("content", "replacement", "prepend", "String") and isinstance(value, str):
                    found.add(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for part in ("normalizer", "pre_tokenizer", "decoder"):
        walk(data.get(part))
    return found


def write_document(doc: BPEDocument, kept_old_ids: list[int], merges: Iterable[tuple[str, str]]) -> Tokenizer:
    """A new ``tokenizers.Tokenizer`` with only ``kept_old_ids`` (ascending), renumbered densely.

    ``merges`` must only use kept tokens. Added tokens, the post-processor and padding get new ids.
    """
    new_id = {old: new for new, old in enumerate(kept_old_ids)}
    data = dict(doc.data)
    model = dict(data["model"])
    model["vocab"] = {t: new_id[i] for t, i in doc.vocab.items() if i in new_id}
    model["merges"] = [[a, b] for a, b in merges]
    data["model"] = model
    data["added_tokens"] = [dict(a, id=new_id[a["id"]]) for a in doc.added if a["id"] in new_id]
    token_id = {doc.id_to_token[old]: new for old, new in new_id.items()}
    data["post_processor"] = _remap_ids(data.get("post_processor"), token_id)
    padding = data.get("padding")
    if isinstance(padding, dict) and padding.get("pad_token") in token_id:
        data["padding"] = dict(padding, pad_id=token_id[padding["pad_token"]])
    return Tokenizer.from_str(json.dumps(data, ensure_ascii=False))


def _remap_ids(node: Any, token_id: Mapping[str, int]) -> Any:
    """Copy of a post-processor config with every (token, id) reference pointing at the new id."""

    def new(token: str) -> int:
        if token not in token_id:
            raise VocabularyPruningError(f"the post-processor uses {token!r}, which is not kept")
        return token_id[token]

    if isinstance(node, dict):
        out = {k: _remap_ids(v, token_id) for k, v in node.items()}
        if isinstance(node.get("tokens"), list) and isinstance(node.get("ids"), list):
            out["ids"] = [new(t) for t in node["tokens"]]
        for key in ("cls", "sep"):
            value = node.get(key)
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                out[key] = [value[0], new(value[0])]
        return out
    if isinstance(node, list):
        return [_remap_ids(v, token_id) for v in node]
    return node
