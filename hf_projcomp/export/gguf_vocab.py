"""A tokenizer as llama.cpp's GGUF vocabulary, read from the tokenizer itself (never from base files).

Two routes, the two kinds of tokenizer vocabulary pruning supports:

* BPE with byte fallback (Gemma, Llama-2, Mistral): llama.cpp's sentencepiece vocabulary
  (``tokenizer.ggml.model = "llama"``): pieces, scores and types of the ``tokenizer.model`` that
  :func:`hf_projcomp.vocab.files.sentencepiece_model` derives from ``tokenizer.json`` and checks
  (so ``<0xXX>`` tokens are typed BYTE and llama.cpp decodes them to bytes).
* byte-level BPE (GPT-2, Llama-3, Qwen2): llama.cpp's BPE vocabulary (``"gpt2"``): tokens, merges,
  and the name llama.cpp gives the pre-tokenizer, looked up from its split regex in
  :data:`PRE_TOKENIZERS` (llama.cpp's own converter identifies it by hashing the ids of a probe text,
  which a pruned, renumbered vocabulary never reproduces).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..vocab.files import dummy_prefix, sentencepiece_model
from ..vocab.tokenizer_json import VocabularyPruningError, read_document

# sentencepiece and GGUF number token types alike: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4,
# UNUSED 5, BYTE 6.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

# The split regex of a byte-level pre-tokenizer -> llama.cpp's name for it (llama-vocab.cpp).
PRE_TOKENIZERS = {
    # Llama-3 (and 3.1/3.2): digits in groups of up to three.
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",  # noqa: E501 (llama.cpp's regex, verbatim)
    # Qwen2 / Qwen2.5 / Qwen3: single digits.
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",  # noqa: E501 (llama.cpp's regex, verbatim)
}
GPT2 = "gpt-2"  # ByteLevel with its built-in regex and no Split


@dataclass
class GGUFVocab:
    """What ``tokenizer.ggml.*`` holds."""

    model: str  # "llama" (sentencepiece) or "gpt2" (byte-level BPE)
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    add_space_prefix: bool | None = None
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None


def gguf_vocab(tokenizer: Any, vocab_size: int | None = None, pre_tokenizer: str | None = None) -> GGUFVocab:
    """``tokenizer`` as a GGUF vocabulary padded to ``vocab_size`` rows (``[PAD<i>]``, UNUSED);
    ``pre_tokenizer`` names llama.cpp's pre-tokenizer by hand when it is not in :data:`PRE_TOKENIZERS`.

    ``ValueError`` for a tokenizer llama.cpp could not reproduce.
    """
    try:
        doc = read_document(tokenizer)
    except VocabularyPruningError as err:
        raise ValueError(f"cannot write this tokenizer as a GGUF vocabulary: {err}") from err
    if doc.kind == "byte_level":
        vocab = _bpe_vocab(doc, pre_tokenizer)
    else:
        vocab = _sentencepiece_vocab(doc, tokenizer)
    size = vocab_size or len(vocab.tokens)
    if size < len(vocab.tokens):
        raise ValueError(f"the tokenizer has {len(vocab.tokens):,} tokens, more than the model's {size:,} rows")
    for i in range(len(vocab.tokens), size):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.types.append(UNUSED)
        if vocab.scores is not None:
            vocab.scores.append(-10000.0)
    token_id = {t: i for i, t in enumerate(vocab.tokens)}
    for name in ("bos", "eos", "unk", "pad"):
        token = getattr(tokenizer, f"{name}_token", None)
        if token is not None and str(token) in token_id:
            vocab.special_ids[name] = token_id[str(token)]
    probe = tokenizer("a")["input_ids"]
    vocab.add_bos = "bos" in vocab.special_ids and probe[:1] == [vocab.special_ids["bos"]]
    vocab.add_eos = "eos" in vocab.special_ids and probe[-1:] == [vocab.special_ids["eos"]]
    template = getattr(tokenizer, "chat_template", None)
    vocab.chat_template = template if isinstance(template, str) else None
    return vocab


def _sentencepiece_vocab(doc: Any, tokenizer: Any) -> GGUFVocab:
    from sentencepiece import sentencepiece_model_pb2 as pb

    data = sentencepiece_model(doc, tokenizer)
    if data is None:
        raise ValueError(
            "this byte-fallback tokenizer has no exact sentencepiece equivalent, which llama.cpp's "
            "'llama' vocabulary needs (see hf_projcomp.vocab.files.sentencepiece_model)"
        )
    proto = pb.ModelProto()  # type: ignore[attr-defined]  # generated at import by protobuf: no stub declares it
    proto.ParseFromString(data)
    tokens, types, scores = [], [], []
    for piece in proto.pieces:
        text = piece.piece
        if piece.type == USER_DEFINED:
            text = text.replace("\u2581", " ")  # llama.cpp matches user-defined tokens on raw text
        tokens.append(text)
        types.append(int(piece.type))
        # Specials get the converter's -1000 (never merged); a byte piece's score is 0 in both.
        scores.append(-1000.0 if piece.type in (CONTROL, USER_DEFINED) else float(piece.score))
    return GGUFVocab("llama", "default", tokens, types, scores=scores, add_space_prefix=bool(dummy_prefix(doc.data)))


def _bpe_vocab(doc: Any, pre_tokenizer: str | None) -> GGUFVocab:
    added = {a["content"]: a for a in doc.added}
    tokens, types = [], []
    for i in range(doc.size):
        token = doc.id_to_token[i]
        tokens.append(token)
        if token in added:
            types.append(CONTROL if added[token].get("special") else USER_DEFINED)
        else:
            types.append(NORMAL)
    pre = pre_tokenizer or _pre_tokenizer_name(doc.data.get("pre_tokenizer"))
    return GGUFVocab("gpt2", pre, tokens, types, merges=[f"{a} {b}" for a, b in doc.merges])


def _pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    steps = (pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]) if pre else []
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return GPT2
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex")
        if regex in PRE_TOKENIZERS:
            return PRE_TOKENIZERS[regex]
        detail = f"split regex {regex!r}"
    else:
        detail = f"pre-tokenizer steps {kinds}"
    raise ValueError(
        f"llama.cpp's name for this tokenizer's pre-tokenizer is unknown ({detail}): pass pre_tokenizer= "
        "(--pre-tokenizer on the command line) with the name llama.cpp uses for the base model, e.g. "
        "'llama-bpe', 'qwen2', 'gpt-2'"
    )


__all__ = ["PRE_TOKENIZERS", "GGUFVocab", "gguf_vocab"]
