"""Tokenizer files beside ``tokenizer.json``, written from it so they can never disagree with it.

Hub tokenizers often ship more than ``tokenizer.json``: sentencepiece models (Gemma, Llama-2,
Mistral) a ``tokenizer.model``, GPT-2-style ones ``vocab.json`` + ``merges.txt``; tools such as
llama.cpp's converter read those. A pruned vocabulary makes the originals wrong (a stale
``tokenizer.model`` gives a GGUF that emits garbage), so :func:`save_tokenizer` derives pruned ones
from the tokenizer it saves, checks them, and writes them, or writes none.

* byte-level BPE: ``vocab.json`` and ``merges.txt`` are the BPE model of ``tokenizer.json`` as is.
* BPE with byte fallback, converted from sentencepiece: a sentencepiece BPE model merges any two
  adjacent pieces whose concatenation is a piece, highest score first. ``tokenizer.json`` holds that
  rule spelled out as merges (every split of every piece, ranked by the piece's score), which
  pruning keeps closed, so ``tokenizer.model`` gets the kept pieces with score ``-rank`` of the
  first merge that builds them. It is written only when ``tokenizer.json`` has that shape and the
  model encodes a probe text exactly as ``tokenizer.json`` does.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from tokenizers import Tokenizer

from .tokenizer_json import BPEDocument, VocabularyPruningError, backend_of, read_document

logger = logging.getLogger(__name__)

SENTENCEPIECE_FILE = "tokenizer.model"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
# Every tokenizer file save_tokenizer may write besides what transformers writes; a directory it
# writes into must not keep an older copy of one it did not write this time.
SIDE_FILES = (SENTENCEPIECE_FILE, VOCAB_FILE, MERGES_FILE)

# Text the derived files must encode exactly as tokenizer.json does: runs of spaces, newlines,
# tabs, digits, accents, CJK, emoji and code exercise every stage (normalizer, BPE, byte fallback).
PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog. 1, 2, 3: ünïcödé and emoji 🦊.",
    " = Robert Boulter = \n\n Robert Boulter is an English film , television and theatre actor . "
    "He had a guest @-@ starring role in 2000 ; it cost £ 3 @,@ 000 (≈ €3.5k).\n",
    "Ünïcödé naïve café — 東京は日本の首都です。 Emoji: 🦙🚀  double  spaces\ttab\n\n\n   three\n",
    "def f(x):\n    return x ** 2  # code, too\n",
)

# sentencepiece ModelProto.SentencePiece.Type
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 1, 2, 3, 4, 6


def save_tokenizer(tokenizer: Any, directory: str | os.PathLike) -> list[str]:
    """``tokenizer.save_pretrained(directory)`` plus the consistent side files (module docstring); an
    older side file in ``directory`` that this tokenizer does not produce is removed.

    Returns the names of the side files written.
    """
    tokenizer.save_pretrained(directory)
    files = side_files(tokenizer)
    for name in SIDE_FILES:
        path = Path(directory, name)
        if name in files:
            path.write_bytes(files[name])
        elif path.is_file():
            path.unlink()
    return sorted(files)


def side_files(tokenizer: Any) -> dict[str, bytes]:
    """File name -> content of the side files derivable from ``tokenizer`` (may be empty)."""
    try:
        doc = read_document(tokenizer)
    except VocabularyPruningError:
        return {}
    if doc.kind == "byte_level":
        return byte_level_files(doc)
    model = sentencepiece_model(doc, tokenizer)
    return {} if model is None else {SENTENCEPIECE_FILE: model}


def byte_level_files(doc: BPEDocument) -> dict[str, bytes]:
    """``vocab.json`` and ``merges.txt`` of a byte-level BPE ``tokenizer.json``."""
    vocab = json.dumps(doc.vocab, ensure_ascii=False, indent=2) + "\n"
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in doc.merges)
    return {VOCAB_FILE: vocab.encode("utf-8"), MERGES_FILE: merges.encode("utf-8")}


def dummy_prefix(data: dict[str, Any]) -> bool | None:
    """sentencepiece's ``add_dummy_prefix`` for the pipelines converted sentencepiece models use
    (None: a pipeline a sentencepiece model cannot express)."""
    normalizer, pre = data.get("normalizer"), data.get("pre_tokenizer")
    steps = normalizer.get("normalizers", [normalizer]) if normalizer else []
    kinds = [s.get("type") for s in steps]
    replace_space = any(
        s.get("type") == "Replace" and s.get("pattern", {}).get("String") == " " and s.get("content") == "▁"
        for s in steps
    )
    if pre is None or (pre.get("type") == "Split" and pre.get("pattern", {}).get("String") == " "):
        if replace_space and set(kinds) <= {"Replace", "Prepend"}:  # Gemma, Llama-2 (legacy)
            return "Prepend" in kinds
        return None
    if pre.get("type") == "Metaspace" and pre.get("replacement") == "▁" and not pre.get("split", True) and not steps:
        return pre.get("prepend_scheme", "always") != "never"
    return None


def _missing_splits(doc: BPEDocument, merges: set[tuple[str, str]], added: set[str]) -> bool:
    """Whether some piece splits into two pieces that are not one of the merges (a sentencepiece
    model would merge them, tokenizer.json would not)."""
    vocab = doc.vocab
    for token in vocab:
        if token in added:
            continue
        for i in range(1, len(token)):
            a, b = token[:i], token[i:]
            if a in vocab and b in vocab and (a, b) not in merges:
                return True
    return False


def sentencepiece_model(doc: BPEDocument, tokenizer: Any = None, texts: Iterable[str] = PROBE_TEXTS) -> bytes | None:
    """A serialised sentencepiece BPE model equivalent to a byte-fallback ``tokenizer.json``, or None
    when none is (see the module docstring); ``tokenizer`` supplies the special-token ids."""
    add_dummy_prefix = dummy_prefix(doc.data)
    if add_dummy_prefix is None or doc.kind != "byte_fallback":
        return None
    if _missing_splits(doc, set(doc.merges), {a["content"] for a in doc.added}):
        logger.info("tokenizer.json is not a converted sentencepiece model: no tokenizer.model written")
        return None
    try:
        from sentencepiece import SentencePieceProcessor
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError:  # pragma: no cover - both are dependencies
        logger.warning("sentencepiece/protobuf not installed: no tokenizer.model written")
        return None
    data = _model_proto(pb, doc, tokenizer, add_dummy_prefix).SerializeToString()
    try:
        processor = SentencePieceProcessor(model_proto=data)
    except RuntimeError as err:
        logger.warning("the derived tokenizer.model does not load (%s): not written", err)
        return None
    backend = backend_of(tokenizer) if tokenizer is not None else Tokenizer.from_str(json.dumps(doc.data))
    for text in texts:
        if processor.encode(text) != backend.encode(text, add_special_tokens=False).ids:
            logger.warning("the derived tokenizer.model encodes %r differently from tokenizer.json: not written", text)
            return None
    return data


def _model_proto(pb: ModuleType, doc: BPEDocument, tokenizer: Any, add_dummy_prefix: bool) -> Any:
    """The ``ModelProto`` (of ``pb``, sentencepiece's protobuf module) of ``doc``'s pieces: a BPE model
    with byte fallback and no normalisation beyond the dummy prefix and escaped spaces."""
    unk = doc.data["model"].get("unk_token")
    proto = pb.ModelProto()
    _add_pieces(proto, doc, unk)
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = doc.size
    spec.byte_fallback = True
    token_id = {t: i for i, t in doc.id_to_token.items()}
    spec.unk_id = token_id.get(unk, -1) if unk else -1
    for field, name in (("bos_id", "bos_token"), ("eos_id", "eos_token"), ("pad_id", "pad_token")):
        value = getattr(tokenizer, name, None) if tokenizer is not None else None
        setattr(spec, field, token_id.get(str(value), -1) if value is not None else -1)
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = add_dummy_prefix
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return proto


def _add_pieces(proto: Any, doc: BPEDocument, unk: str | None) -> None:
    """One piece per id, typed; a normal piece scores ``-rank`` of the first merge that builds it."""
    added = {a["content"]: a for a in doc.added}
    first_rank: dict[str, int] = {}
    for rank, (a, b) in enumerate(doc.merges):
        first_rank.setdefault(a + b, rank)
    for i in range(doc.size):
        token = doc.id_to_token[i]
        piece = proto.pieces.add()
        piece.piece = token
        if token == unk:
            piece.type = _UNKNOWN
        elif token in added:
            piece.type = _CONTROL if added[token].get("special") else _USER_DEFINED
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            piece.type = _BYTE
        else:
            piece.type = _NORMAL
            piece.score = -float(first_rank.get(token, 0))


def side_file_mismatches(directory: str | os.PathLike, tokenizer: Any, texts: Iterable[str] = PROBE_TEXTS) -> list[str]:
    """Side files in ``directory`` that disagree with ``tokenizer`` (empty: all consistent)."""
    root = Path(directory)
    present = [name for name in SIDE_FILES if (root / name).is_file()]
    if not present:
        return []
    problems = []
    try:
        doc = read_document(tokenizer)
    except VocabularyPruningError:
        doc = None
    if SENTENCEPIECE_FILE in present:
        from sentencepiece import SentencePieceProcessor

        processor = SentencePieceProcessor(model_file=str(root / SENTENCEPIECE_FILE))
        if processor.get_piece_size() != len(tokenizer):
            problems.append(
                f"{SENTENCEPIECE_FILE} has {processor.get_piece_size():,} pieces, the tokenizer "
                f"{len(tokenizer):,} tokens"
            )
        elif any(processor.encode(t) != tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts):
            problems.append(f"{SENTENCEPIECE_FILE} encodes text differently from tokenizer.json")
    if VOCAB_FILE in present or MERGES_FILE in present:
        expected = byte_level_files(doc) if doc is not None and doc.kind == "byte_level" else {}
        for name in (VOCAB_FILE, MERGES_FILE):
            if name in present and (root / name).read_bytes() != expected.get(name):
                problems.append(f"{name} does not describe this tokenizer's vocabulary")
    return problems


__all__ = [
    "PROBE_TEXTS",
    "SIDE_FILES",
    "byte_level_files",
    "dummy_prefix",
    "save_tokenizer",
    "sentencepiece_model",
    "side_file_mismatches",
    "side_files",
]
