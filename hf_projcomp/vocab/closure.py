"""Which tokens must stay, and which extra tokens keep every kept token reachable through the merges.

:class:`GrowingClosure` decides reachability: a kept token keeps its ancestors, the tokens the
original BPE forms on the way to it (see :meth:`MergeGraph.ancestors`).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tokenizers.pre_tokenizers import ByteLevel

from .tokenizer_json import BPEDocument, config_strings, post_processor_tokens

# Reserved placeholder tokens (Gemma's 6,242 <unusedN>, Llama-3's <|reserved_special_token_N|>, BERT's
# [unusedN]) never occur in text: keeping them would spend thousands of embedding rows on nothing.
PLACEHOLDER = re.compile(r"^[<\[]\|?(unused|reserved)[a-z_]*\d+\|?[>\]]$")

# Keeping printable ASCII as single characters costs ~100 ids and keeps plain text away from the
# <0xXX> byte tokens, whose embeddings a byte-fallback model rarely trained.
_BASE_CHARS = frozenset(chr(c) for c in range(0x20, 0x7F)) | {"\t", "\n", "\r"}


def required_strings(doc: BPEDocument, special_tokens: Iterable[str] = (), keep_placeholders: bool = False) -> set[str]:
    """Token strings every pruned vocabulary keeps (see :func:`hf_projcomp.vocab.required_token_ids`)."""
    named = set(special_tokens) | post_processor_tokens(doc.data)
    unk = doc.data["model"].get("unk_token")
    if unk:
        named.add(unk)
    required = {t for t in named if t in doc.vocab or t in _added_contents(doc)}
    for token in doc.added:
        if keep_placeholders or not PLACEHOLDER.match(token["content"]):
            required.add(token["content"])
    if doc.kind == "byte_fallback":
        required.update(t for t in (f"<0x{b:02X}>" for b in range(256)) if t in doc.vocab)
        chars = _BASE_CHARS | {s for s in config_strings(doc.data) if len(s) == 1}
        required.update(c for c in chars if c in doc.vocab)
    else:
        required.update(c for c in ByteLevel.alphabet() if c in doc.vocab)
    return required


def _added_contents(doc: BPEDocument) -> set[str]:
    return {a["content"] for a in doc.added}


@dataclass
class MergeGraph:
    """Merges indexed by the token they produce.

    ``producers[t]`` lists the ranks of every merge whose result is ``t``, ascending. Gemma's merges
    hold *every* split of a token into two vocabulary entries (514,906 merges for 262,144 tokens), a
    GPT-2-style trained BPE exactly one.
    """

    merges: list[tuple[str, str]]
    producers: dict[str, list[int]]
    leaves: set[str] = field(default_factory=set)  # added tokens: matched before BPE, need no merge
    _table: dict[tuple[str, str], tuple[int, str]] | None = None
    _ancestors: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, doc: BPEDocument) -> MergeGraph:
        producers: dict[str, list[int]] = {}
        vocab = doc.vocab
        for rank, (a, b) in enumerate(doc.merges):
            t = a + b
            if t in vocab:
                producers.setdefault(t, []).append(rank)
        leaves = _added_contents(doc)
        return cls(doc.merges, producers, leaves)

    def needs_merge(self, token: str) -> bool:
        return token in self.producers and token not in self.leaves

    def first_rank(self, token: str) -> int:
        return self.producers[token][0]

    def first_parts(self, token: str) -> tuple[str, str]:
        return self.merges[self.producers[token][0]]

    def ancestors(self, token: str) -> tuple[str, ...]:
        """Tokens that must be kept so the original merges still build ``token``.

        These are the pieces the original BPE forms when it encodes ``token`` alone (characters
        included), not the parts of its first merge: with Gemma's all-splits merges the two differ
        (first-merge parents turned '▁through' into '▁th rou gh'). Keeping the pieces of the real
        run, and every original merge among kept tokens, makes the pruned BPE repeat the original
        run step by step on any text whose original tokens are all kept: each token's span is
        merged independently of its neighbours, exactly as when that token is encoded alone.
        Tokens the original never builds from their own characters keep their first merge's parts.
        """
        cached = self._ancestors.get(token)
        if cached is None:
            if not self.needs_merge(token):
                cached = ()
            else:
                if self._table is None:
                    table: dict[tuple[str, str], tuple[int, str]] = {}
                    for rank, (a, b) in enumerate(self.merges):
                        table[a, b] = (rank, a + b)  # a repeated pair keeps its last rank, as in tokenizers
                    self._table = table
                pieces, formed = _segment(token, self._table, len(self.merges))
                cached = tuple(set(token) | formed - {token}) if pieces == [token] else self.first_parts(token)
            self._ancestors[token] = cached
        return cached

    def kept_merges(self, kept: set[str]) -> list[tuple[int, tuple[str, str]]]:
        """(rank, merge) of every original merge whose parts and result are all kept."""
        out = []
        for t, ranks in self.producers.items():
            if t in kept:
                for r in ranks:
                    a, b = self.merges[r]
                    if a in kept and b in kept:
                        out.append((r, (a, b)))
        return out


class GrowingClosure:
    """The merge closure (each kept token keeps its ancestors, recursively) of ``seeds`` ∪ ``ranked[:n]``
    for every ``n``, grown one ranked token at a time and only as far as asked.

    The closure of a longer prefix contains that of a shorter one, so after growing, the closure of
    ``ranked[:n]`` is ``order[:sizes[n]]``. Growing stops once the closure passes the largest budget
    asked so far: the tail of a 262k-token ranking never needs its ancestors computed.
    """

    def __init__(self, graph: MergeGraph, seeds: Iterable[str], ranked: list[str]) -> None:
        self.graph, self.ranked = graph, ranked
        self.order: list[str] = []
        self._seen: set[str] = set()
        for token in sorted(seeds):
            self._add(token)
        self.sizes = [len(self.order)]

    def _add(self, token: str) -> None:
        stack = [token]
        while stack:
            t = stack.pop()
            if t not in self._seen:
                self._seen.add(t)
                self.order.append(t)
                if self.graph.needs_merge(t):
                    stack.extend(self.graph.ancestors(t))

    def grow_past(self, size: float) -> None:
        """Grow until the closure holds more than ``size`` tokens or the ranking is used up."""
        while len(self.sizes) <= len(self.ranked) and self.sizes[-1] <= size:
            self._add(self.ranked[len(self.sizes) - 1])
            self.sizes.append(len(self.order))

    def within(self, budget: float) -> set[str]:
        """The closure of the longest prefix whose closure holds at most ``budget`` tokens."""
        self.grow_past(budget)
        return set(self.order[: self.sizes[bisect.bisect_right(self.sizes, budget) - 1]])


def closure_merges(graph: MergeGraph, kept: set[str]) -> list[tuple[str, str]]:
    """Original merges among kept tokens, in original order: exactly the old tokenizer's behaviour on
    any word whose old merge path stays inside ``kept``."""
    return [m for _, m in sorted(graph.kept_merges(kept))]


def _segment(word: str, table: Mapping[tuple[str, str], tuple[int, str]], limit: int) -> tuple[list[str], set[str]]:
    """BPE on ``word`` with the merges of ``table`` whose key is below ``limit`` (lowest key first,
    leftmost on ties, as the tokenizers library does): the final pieces and the set of tokens formed."""
    symbols = list(word)
    formed: set[str] = set()
    while len(symbols) > 1:
        best = None
        for i in range(len(symbols) - 1):
            hit = table.get((symbols[i], symbols[i + 1]))
            if hit is not None and hit[0] < limit and (best is None or hit[0] < best[0]):
                best = (hit[0], i, hit[1])
        if best is None:
            break
        _, i, merged = best
        symbols[i : i + 2] = [merged]
        formed.add(merged)
    return symbols, formed
