"""Tiny tokenizers trained here, one of each supported kind: byte-fallback BPE ('▁', Llama-2/Gemma
style) and byte-level BPE (GPT-2/Qwen2 style)."""

from __future__ import annotations

import json

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

TRAIN = [
    "The European lobster is a species of clawed lobster from the eastern Atlantic Ocean, the "
    "Mediterranean Sea and parts of the Black Sea. It is closely related to the American lobster.",
    "Lobsters may grow to a length of sixty centimetres and a mass of six kilograms, and bear a "
    "conspicuous pair of claws. In life the lobsters are blue, only becoming lobster red on cooking.",
    "Mating occurs in the summer, producing eggs which are carried by the females for up to a year "
    "before hatching into planktonic larvae. The species is highly prized as food, and is widely caught.",
    "The album was recorded in the spring of that year and released in the autumn. Critics praised "
    "the songs, the production and the singing; the band toured through the winter and the next year.",
    "In the café the students talked about the history of the town, the river, the bridge and the "
    "old market. The town was founded in the twelfth century and grew quickly during the next century.",
    "Numbers such as 1994, 2010 and 42 appear in the text, as do commas, stops; colons: and (brackets).",
]

HELD_OUT = [
    "naïve café — 日本 🙂",
    "Quokkas and zyzzyvas! 3.14159 × 2 = 6.28318; e-mail: someone@example.org (maybe?)",
    "  leading spaces, trailing spaces  and   runs of spaces\nnew lines\n\nand\ttabs ",
    "The lobster album was released in the café, 12345 times.",
    "Ünïcödé ẞ Ω ≈ ∑ 🦞🦞 ok",
]

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


def _byte_fallback_backend() -> Tokenizer:
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.train_from_iterator(TRAIN, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False))
    # Byte tokens as ordinary vocabulary right after the specials, as in Llama-2 and Gemma.
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    order = sorted(vocab, key=vocab.get)
    order = order[:4] + [f"<0x{b:02X}>" for b in range(256)] + order[4:]
    data["model"]["vocab"] = {t: i for i, t in enumerate(order)}
    tok = Tokenizer.from_str(json.dumps(data))
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)]
    )
    return tok


def _byte_level_backend() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAIN, trainer)
    # A nested post-processor, so remapping has to walk a Sequence.
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", 0)]),
        ]
    )
    return tok


def tiny_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A fresh tokenizer of ``kind``: "byte_fallback" or "byte_level"."""
    if kind == "byte_fallback":
        return PreTrainedTokenizerFast(
            tokenizer_object=_byte_fallback_backend(),
            bos_token="<bos>",
            eos_token="<eos>",
            pad_token="<pad>",
            unk_token="<unk>",
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_backend(), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
