"""Bits-per-byte evaluation checked against NLL computed by hand on a tiny random model."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hf_projcomp.evaluate import bits_per_byte, evaluate_text, load_text

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model assigns probabilities to sequences of tokens.",
    "Bits per byte compare models whose tokenizers differ.",
    "Café au lait, naïve résumé — déjà vu!",
    "Numbers like 1024 and 2048 appear in configs.",
]
SHORT_TEXT = "The lazy fox assigns bits to bytes."
# Non-ASCII characters make bytes != characters, so a per-character slip would show.
LONG_TEXT = " ".join(SENTENCES * 3) + " Über-naïve tokens: 東京."


pytestmark = pytest.mark.usefixtures("one_thread")


def _tokenizer(add_bos: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
        )
    # With add_bos=False the tokenizer still *has* a BOS token (like GPT-2) but never adds it:
    # the evaluator must then treat it as a tokenizer without BOS.
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return _tokenizer(add_bos=True)


@pytest.fixture(scope="module")
def model(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(config).eval()


def _direct_nats(model, seq: list[int]) -> float:
    """NLL in nats of tokens 1..n-1 of ``seq`` from one plain forward pass, in float64."""
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return -sum(logp[i, seq[i + 1]].item() for i in range(len(seq) - 1))


def _bpb(nats: float, text: str) -> float:
    return nats / math.log(2) / len(text.encode("utf-8"))


def test_short_text_equals_one_forward_pass(model, tokenizer):
    seq = tokenizer(SHORT_TEXT)["input_ids"]
    assert seq[0] == tokenizer.bos_token_id
    expected = _bpb(_direct_nats(model, seq), SHORT_TEXT)
    assert bits_per_byte(model, tokenizer, SHORT_TEXT, progress=False) == pytest.approx(expected, rel=1e-5)


def test_several_windows_bos_each_window(model, tokenizer):
    window = 16
    ids = tokenizer(LONG_TEXT, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    chunks = [[bos, *ids[i : i + window - 1]] for i in range(0, len(ids), window - 1)]
    assert len(chunks) >= 4 and len(chunks[-1]) < window  # several windows, a short last one
    assert sum(len(c) - 1 for c in chunks) == len(ids)  # every text token predicted once
    expected = _bpb(sum(_direct_nats(model, c) for c in chunks), LONG_TEXT)

    got = bits_per_byte(model, tokenizer, LONG_TEXT, window=window, bos_each_window=True, progress=False)
    assert got == pytest.approx(expected, rel=1e-5)
    # Windows must not see each other: scoring with full context gives a different number.
    full = bits_per_byte(model, tokenizer, LONG_TEXT, window=4096, progress=False)
    assert full == pytest.approx(_bpb(_direct_nats(model, [bos, *ids]), LONG_TEXT), rel=1e-5)
    assert got != pytest.approx(full, rel=1e-6)


def test_several_windows_plain_chunks(model, tokenizer):
    window = 16
    stream = tokenizer(LONG_TEXT)["input_ids"]  # BOS once, at the very start
    chunks = [stream[i : i + window] for i in range(0, len(stream), window)]
    expected = _bpb(sum(_direct_nats(model, c) for c in chunks if len(c) > 1), LONG_TEXT)
    result = evaluate_text(model, tokenizer, LONG_TEXT, window=window, bos_each_window=False, progress=False)
    assert result["bits_per_byte"] == pytest.approx(expected, rel=1e-5)
    assert result["tokens"] == len(stream)
    # The first token of every window is context only.
    assert result["predicted_tokens"] == len(stream) - math.ceil(len(stream) / window)


def test_tokenizer_that_does_not_add_bos(model):
    tokenizer = _tokenizer(add_bos=False)
    window = 16
    ids = tokenizer(LONG_TEXT)["input_ids"]
    assert tokenizer.bos_token_id not in ids
    chunks = [ids[i : i + window] for i in range(0, len(ids), window)]
    expected = _bpb(sum(_direct_nats(model, c) for c in chunks if len(c) > 1), LONG_TEXT)
    # bos_each_window has nothing to prefix and must not invent a BOS the tokenizer never adds.
    got = bits_per_byte(model, tokenizer, LONG_TEXT, window=window, progress=False)
    assert got == pytest.approx(expected, rel=1e-5)


def test_evaluate_text_metrics_share_one_pass(model, tokenizer):
    result = evaluate_text(model, tokenizer, LONG_TEXT, window=16, bos_each_window=True, progress=False)
    n_bytes = len(LONG_TEXT.encode("utf-8"))
    n_words = len(LONG_TEXT.split())
    assert result["bytes"] == n_bytes > len(LONG_TEXT)
    assert result["words"] == n_words
    assert result["tokens"] == len(tokenizer(LONG_TEXT)["input_ids"])
    assert result["predicted_tokens"] == result["tokens"] - 1
    assert result["bits_per_byte"] == pytest.approx(result["nats"] / math.log(2) / n_bytes)
    assert result["word_perplexity"] == pytest.approx(math.exp(result["nats"] / n_words))
    assert result["token_perplexity"] == pytest.approx(math.exp(result["nats"] / result["predicted_tokens"]))
    assert result["bits_per_byte"] == pytest.approx(
        bits_per_byte(model, tokenizer, LONG_TEXT, window=16, bos_each_window=True, progress=True)
    )


def test_batching_does_not_change_the_result(model, tokenizer):
    one = bits_per_byte(model, tokenizer, LONG_TEXT, window=16, batch_size=1, progress=False)
    three = bits_per_byte(model, tokenizer, LONG_TEXT, window=16, batch_size=3, progress=False)
    assert three == pytest.approx(one, rel=1e-5)


def test_training_mode_is_restored(model, tokenizer):
    model.train()
    try:
        bits_per_byte(model, tokenizer, SHORT_TEXT, progress=False)
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"text": ""}, "text"),
        ({"window": 1}, "window"),
        ({"window": 0}, "window"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_input(model, tokenizer, kwargs, match):
    args = {"text": SHORT_TEXT, **kwargs}
    with pytest.raises(ValueError, match=match):
        bits_per_byte(model, tokenizer, progress=False, **args)
    with pytest.raises(ValueError, match=match):
        evaluate_text(model, tokenizer, progress=False, **args)


def test_load_text(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("naïve\r\nline two\n".encode())
    assert load_text(path) == "naïve\nline two\n"  # universal newlines, like the reference runs
    assert load_text(path, max_chars=3) == "naï"
    with pytest.raises(ValueError, match="max_chars"):
        load_text(path, max_chars=0)


def test_latency_ratio_alternates_and_reports_the_median_and_spread():
    """Rounds alternate which model runs first (a load drift falls on both); each round's ratio is the
    model's forward over the base's; the median and the extremes are reported. A fake clock stands in
    for time: each forward takes what its model says."""
    from hf_projcomp.evaluate import forward_latency_ratio

    now, calls = [0.0], []

    class Net(torch.nn.Module):
        def __init__(self, name, durations):
            super().__init__()
            self.name, self.durations = name, iter(durations)

        def forward(self, input_ids):
            assert input_ids.shape == (1, 16)
            calls.append(self.name)
            now[0] += next(self.durations)

    model = Net("model", [9.0, 1.0, 2.0, 1.0, 4.0, 1.0])  # warm-up first
    base = Net("base", [9.0, 2.0, 2.0, 1.0, 2.0, 4.0])
    ratio = forward_latency_ratio(model, base, 10, 12, tokens=16, rounds=5, clock=lambda: now[0])
    assert calls == [
        "model",
        "base",
        "model",
        "base",
        "base",
        "model",
        "model",
        "base",
        "base",
        "model",
        "model",
        "base",
    ]
    assert (ratio.median, ratio.low, ratio.high, ratio.rounds) == (1.0, 0.25, 2.0, 5)
