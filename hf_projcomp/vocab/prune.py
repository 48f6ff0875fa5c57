"""The public entry points: required ids and :func:`prune_tokenizer`."""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable
from typing import Any

import torch
from tokenizers import Tokenizer

from .closure import GrowingClosure, MergeGraph, closure_merges, required_strings
from .tokenizer_json import BPEDocument, VocabularyPruningError, read_document, write_document

# init kwargs that describe the old files or old ids; the new tokenizer gets its vocabulary from
# the rewritten backend instead.
_STALE_INIT_KWARGS = frozenset(
    {
        "added_tokens_decoder",
        "tokenizer_object",
        "tokenizer_file",
        "vocab",
        "merges",
        "vocab_file",
        "merges_file",
        "name_or_path",
        "_commit_hash",
    }
)


def required_token_ids(tokenizer: Any, *, keep_placeholders: bool = False) -> set[int]:
    """Ids every pruned vocabulary keeps.

    Special and added tokens (except reserved placeholders such as ``<unused12>`` unless
    ``keep_placeholders``), tokens the post-processor inserts, ``unk``; for byte-fallback BPE the 256
    ``<0xXX>`` tokens plus printable ASCII and the characters the normalizer/decoder use (e.g. '▁');
    for byte-level BPE the 256 byte-alphabet characters. With these any text still encodes.
    """
    doc = read_document(tokenizer)
    return _ids(doc, required_strings(doc, _special_tokens(tokenizer), keep_placeholders))


def prune_tokenizer(
    tokenizer: Any,
    keep_ids: Iterable[int],
    *,
    max_vocab_size: int | None = None,
    keep_placeholders: bool = False,
) -> tuple[Any, torch.Tensor]:
    """A new tokenizer of the same class holding only the kept tokens, renumbered densely.

    Kept = ``keep_ids`` ∪ :func:`required_token_ids` ∪ the ancestors that keep every kept token
    reachable through the merges. Any text whose original tokens are all kept is then segmented
    exactly as before. With ``max_vocab_size``, ``keep_ids`` is read as a ranking (best first; a set
    is taken in ascending id order) and the longest prefix whose kept total fits is used.

    Returns ``(new_tokenizer, kept_old_ids)`` with ``kept_old_ids[new_id] = old_id`` (ascending), ready
    to gather embedding rows. To prune one tokenizer to several sizes, use :class:`VocabularyPruner`.
    """
    pruner = VocabularyPruner(tokenizer, keep_placeholders=keep_placeholders)
    return pruner.prune(keep_ids, max_vocab_size=max_vocab_size)


class VocabularyPruner:
    """:func:`prune_tokenizer` for one tokenizer and many requests: the tokenizer's JSON, its merge graph
    and the required tokens are read once, and the closure of a ranking is grown once for all sizes."""

    def __init__(self, tokenizer: Any, *, keep_placeholders: bool = False) -> None:
        self.tokenizer = tokenizer
        self.doc = read_document(tokenizer)
        self.required = required_strings(self.doc, _special_tokens(tokenizer), keep_placeholders)
        self._grown: GrowingClosure | None = None

    @functools.cached_property
    def graph(self) -> MergeGraph:
        return MergeGraph.build(self.doc)

    @property
    def required_ids(self) -> set[int]:
        """Ids every pruned vocabulary keeps (see :func:`required_token_ids`)."""
        return _ids(self.doc, self.required)

    def prune(self, keep_ids: Iterable[int], *, max_vocab_size: int | None = None) -> tuple[Any, torch.Tensor]:
        """See :func:`prune_tokenizer`."""
        # Ancestors, not new merges between kept tokens ("re-parenting", removed): the ancestors are
        # the pieces the original BPE really forms (MergeGraph.ancestors), almost all needed anyway, and
        # their closure provably keeps covered text canonical. Measurements: docs/decisions.md#reparent
        doc, graph = self.doc, self.graph
        kept = self._closure(_ranked_tokens(doc, keep_ids), max_vocab_size)
        merges = closure_merges(graph, kept)
        kept_old_ids = sorted(_ids(doc, kept))
        backend = write_document(doc, kept_old_ids, merges)
        new_tokenizer = _same_class(self.tokenizer, backend)
        # transformers adds any named special token missing from the backend as a new token: that would
        # be an id without an embedding row.
        size = new_tokenizer.get_vocab_size() if isinstance(new_tokenizer, Tokenizer) else len(new_tokenizer)
        if size != len(kept_old_ids):
            raise VocabularyPruningError(
                f"the rebuilt tokenizer has {size} tokens, expected {len(kept_old_ids)}: "
                "a special token of the original is probably missing from its tokenizer.json"
            )
        return new_tokenizer, torch.tensor(kept_old_ids, dtype=torch.long)

    def _closure(self, ranked: list[str], budget: int | None) -> set[str]:
        """The merge closure of the required tokens and the longest prefix of ``ranked`` that fits
        ``budget`` (all of it without one), grown once per ranking and shared by every budget."""
        if self._grown is None or self._grown.ranked != ranked:
            self._grown = GrowingClosure(self.graph, self.required, ranked)
        if budget is not None and self._grown.sizes[0] > budget:
            raise VocabularyPruningError(
                f"max_vocab_size={budget} is below the {self._grown.sizes[0]} tokens that must be kept"
            )
        return self._grown.within(float("inf") if budget is None else budget)


def _special_tokens(tokenizer: Any) -> list[str]:
    return [str(t) for t in getattr(tokenizer, "all_special_tokens", None) or []]


def _ids(doc: BPEDocument, tokens: Iterable[str]) -> set[int]:
    token_id = {t: i for i, t in doc.id_to_token.items()}
    return {token_id[t] for t in tokens if t in token_id}


def _ranked_tokens(doc: BPEDocument, keep_ids: Iterable[int]) -> list[str]:
    if isinstance(keep_ids, torch.Tensor):
        keep_ids = keep_ids.flatten().tolist()
    elif isinstance(keep_ids, (set, frozenset)):
        keep_ids = sorted(keep_ids)
    out: list[str] = []
    seen: set[int] = set()
    for i in keep_ids:
        i = int(i)
        if i not in doc.id_to_token:
            raise VocabularyPruningError(f"keep_ids contains {i}, which is not a token id of this tokenizer")
        if i not in seen:
            seen.add(i)
            out.append(doc.id_to_token[i])
    return out


# Tokenizer state users set after loading (``tok.pad_token = tok.eos_token``, a chat template...):
# it lives on the instance, not in ``init_kwargs``, and the pruned tokenizer must keep it.
_INSTANCE_SETTINGS = (
    "chat_template",
    "padding_side",
    "truncation_side",
    "model_max_length",
    "model_input_names",
    "clean_up_tokenization_spaces",
    "split_special_tokens",
    "response_template",
    "chat_control_tokens",
)


def _same_class(tokenizer: Any, backend: Tokenizer) -> Any:
    """Wrap ``backend`` in the original's class with the original's settings and special tokens as they
    are on the object now, not as it was loaded (``init_kwargs``), as transformers' own
    ``train_new_from_iterator`` does for the latter."""
    if isinstance(tokenizer, Tokenizer):
        return backend
    kwargs = {k: v for k, v in tokenizer.init_kwargs.items() if k not in _STALE_INIT_KWARGS}
    for attr in _INSTANCE_SETTINGS:
        if attr in tokenizer.__dict__ and not _class_default(tokenizer, attr):
            kwargs[attr] = copy.deepcopy(tokenizer.__dict__[attr])
    named = tokenizer._special_tokens_map  # None values too: a special the user unset stays unset
    standard = set(type(tokenizer).SPECIAL_TOKENS_ATTRIBUTES)
    kwargs.update({k: v for k, v in named.items() if k in standard})
    kwargs["model_specific_special_tokens"] = {k: v for k, v in named.items() if k not in standard and v is not None}
    kwargs["extra_special_tokens"] = list(tokenizer._extra_special_tokens)
    # Passing add_bos/eos_token would rebuild the post-processor from them; the backend already holds
    # the original's (remapped), as it is now, so only the flags are mirrored.
    flags = {f: tokenizer.__dict__[f] for f in ("_add_bos_token", "_add_eos_token") if f in tokenizer.__dict__}
    kwargs.pop("add_bos_token", None)
    kwargs.pop("add_eos_token", None)
    new = type(tokenizer)(tokenizer_object=backend, **kwargs)
    for flag, value in flags.items():
        object.__setattr__(new, flag, value)
    _check_same_specials(tokenizer, new)
    return new


def _class_default(tokenizer: Any, attr: str) -> bool:
    """Whether ``attr`` holds what the tokenizer's class gives it and its files did not set: the pruned
    tokenizer gets it from the class too, and its files leave it out as the original's do."""
    missing = object()
    return attr not in tokenizer.init_kwargs and tokenizer.__dict__[attr] == getattr(type(tokenizer), attr, missing)


def _check_same_specials(old: Any, new: Any) -> None:
    """The pruned tokenizer names the same special tokens and template as the original, or fails."""
    for what in (
        "special_tokens_map",
        "extra_special_tokens",
        "chat_template",
        "padding_side",
        "add_bos_token",
        "add_eos_token",
    ):
        if getattr(old, what, None) != getattr(new, what, None):
            raise VocabularyPruningError(
                f"the pruned tokenizer's {what} ({getattr(new, what, None)!r}) differs from the original's "
                f"({getattr(old, what, None)!r})"
            )
