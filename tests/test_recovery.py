"""Recovery after hard pruning: distill_pruned trains a COMPACT model toward its base."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_projcomp import DistillConfig, compact_prune, distill_pruned
from hf_projcomp.blocks import text_blocks
from hf_projcomp.training import DistillationTrainer, Teacher, distillation_kl
from tests.test_compact import model_for
from tests.tiny_tokenizers import TRAIN, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
# Short blocks: a tiny model moves visibly within a few steps. One stream of blocks: the tiny base was
# fitted to one BOS-prefixed text, so there pruning costs it most and the recovery shows most.
FAST = dict(
    block_size=32,
    batch_size=4,
    micro_batch_size=2,
    max_tokens=32 * 4 * 6,
    learning_rate=1e-4,
    warmup_steps=0,
    bos_each_block=False,
)


def trained_base(tokenizer):
    """A tiny Llama fitted to TRAIN for a few steps: a random one predicts nearly uniformly, so pruning
    it changes almost nothing there is to recover."""
    model = model_for("llama", tokenizer).train()
    ids = torch.tensor([tokenizer("\n".join(TRAIN))["input_ids"][:128]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def pruned():
    tokenizer = tiny_tokenizer("byte_fallback")
    base = trained_base(tokenizer)
    small, small_tok, selection = compact_prune(
        base,
        tokenizer,
        TRAIN * 4,
        split=(len(tokenizer) - 100, 32),
        num_sequences=4,
        sequence_length=64,
        heldout_tokens=64,
        progress=False,
    )
    return base, small, small_tok, selection.kept_token_ids


def kl_to_base(base, small, small_tok, kept) -> float:
    """Mean KL(base ‖ small) per position over every training block: the loss the run lowers."""
    ids = torch.tensor(text_blocks(small_tok, TRAIN * 4, FAST["block_size"], add_special_tokens=True, progress=False))
    with torch.no_grad():
        kl, positions = distillation_kl(small(input_ids=ids).logits, Teacher(base, kept.tolist()).logits(ids), ids)
    return (kl / positions).item()


def test_distillation_brings_the_pruned_model_toward_the_base(pruned, capsys):
    base, small, small_tok, kept = pruned
    student = copy.deepcopy(small)
    before = kl_to_base(base, student, small_tok, kept)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    trained = distill_pruned(student, base, small_tok, TRAIN * 4, vocab_indices=kept, progress=False, **FAST)
    assert trained is student and not trained.training
    after = kl_to_base(base, trained, small_tok, kept)
    assert after < 0.8 * before, (before, after)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in base_state.items())  # the teacher stays frozen
    assert capsys.readouterr().out == ""  # progress=False: no Trainer log lines either


def test_a_bfloat16_model_trains_in_float32_and_comes_back_bfloat16(pruned):
    """A bf16 student's run equals the float32 run from the same (bf16-rounded) weights, rounded once:
    the optimizer's small steps are not lost to bf16 rounding at every update."""
    base, small, small_tok, kept = pruned
    half = copy.deepcopy(small).to(torch.bfloat16)
    full = copy.deepcopy(half).float()
    rotary = half.model.rotary_emb
    rotary.inv_freq = rotary.inv_freq.float()  # as from_pretrained(dtype=bfloat16) leaves it
    buffers = {k: v.clone() for k, v in half.named_buffers()}
    initial = {k: v.clone() for k, v in half.state_dict().items()}
    distill_pruned(half, base, small_tok, TRAIN * 4, vocab_indices=kept, progress=False, **FAST)
    distill_pruned(full, base, small_tok, TRAIN * 4, vocab_indices=kept, progress=False, **FAST)
    assert half.dtype == torch.bfloat16
    for name, value in half.named_buffers():  # buffers are not converted: they reload as they were
        assert value.dtype == buffers[name].dtype and torch.equal(value, buffers[name]), name
    for name, value in half.state_dict().items():
        assert torch.equal(value, full.state_dict()[name].to(torch.bfloat16)), name
    assert any(not torch.equal(v, initial[k]) for k, v in half.state_dict().items())


def test_a_stopped_run_leaves_the_model_in_its_dtype(pruned, monkeypatch):
    base, small, small_tok, kept = pruned
    half = copy.deepcopy(small).to(torch.bfloat16)

    def stop(self, *args, **kwargs):
        raise FloatingPointError("training loss is nan")

    monkeypatch.setattr(DistillationTrainer, "train", stop)
    with pytest.raises(FloatingPointError):
        distill_pruned(half, base, small_tok, TRAIN * 4, vocab_indices=kept, progress=False, **FAST)
    assert half.dtype == torch.bfloat16


def test_a_stream_is_read_only_as_far_as_the_run_needs(pruned):
    base, small, small_tok, kept = pruned
    read = []

    def stream():
        for i in range(10_000):
            read.append(i)
            yield TRAIN[i % len(TRAIN)]

    distill_pruned(
        copy.deepcopy(small),
        base,
        small_tok,
        stream(),
        vocab_indices=kept,
        progress=False,
        **{**FAST, "max_tokens": 32 * 4},
    )
    assert 0 < len(read) < 100


def test_blocks_cut_one_stream_or_start_each_with_bos(monkeypatch):
    """distill_pruned trains on one stream of the texts as the tokenizer encodes them, or on blocks that
    each start with BOS (bos_each_block)."""
    tokenizer = tiny_tokenizer("byte_fallback")
    texts = TRAIN[:6]
    seen = []
    monkeypatch.setattr(DistillationTrainer, "train", lambda trainer: seen.append(trainer.train_dataset))
    model = model_for("llama", tokenizer)
    for each in (False, True):
        config = dict(FAST, block_size=16, max_tokens=16 * 4, bos_each_block=each)
        distill_pruned(copy.deepcopy(model), model, tokenizer, texts, progress=False, **config)
    plain, each = (dataset["input_ids"] for dataset in seen)
    assert all(dataset["labels"] == dataset["input_ids"] for dataset in seen)
    stream = [i for text in texts for i in tokenizer(text)["input_ids"]]  # each text as the tokenizer encodes it
    assert plain == [stream[i : i + 16] for i in range(0, len(stream) - 15, 16)]
    bos = tokenizer.bos_token_id
    body = [i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    assert all(len(block) == 16 and block[0] == bos and bos not in block[1:] for block in each)
    assert [i for block in each for i in block[1:]] == body[: 15 * len(each)] and len(body) - 15 * len(each) < 15


def test_old_import_paths_still_work():
    """hf_projcomp.training.recovery re-exports the distillation names; training_blocks warns."""
    from hf_projcomp.training import distill, recovery

    for name in ("SCHEDULERS", "DistillConfig", "DistillationTrainer", "distill_pruned"):
        assert getattr(recovery, name) is getattr(distill, name)
    tokenizer = tiny_tokenizer("byte_fallback")
    with pytest.warns(DeprecationWarning, match="text_blocks"):
        blocks = recovery.training_blocks(tokenizer, TRAIN[:6], 16, bos_each_block=True, progress=False)
    bos = tokenizer.bos_token_id
    assert blocks["input_ids"] == text_blocks(tokenizer, TRAIN[:6], 16, bos=bos, progress=False)


def test_bad_input_names_the_parameter(pruned):
    base, small, small_tok, kept = pruned
    with pytest.raises(ValueError, match="pass vocab_indices"):
        distill_pruned(small, base, small_tok, TRAIN, progress=False, **FAST)
    with pytest.raises(ValueError, match="vocab_indices has 3 ids"):
        distill_pruned(small, base, small_tok, TRAIN, vocab_indices=[0, 1, 2], progress=False, **FAST)
    with pytest.raises(ValueError, match="fewer than one step's batch_size"):
        distill_pruned(small, base, small_tok, TRAIN[:1], vocab_indices=kept, progress=False, **FAST)
    with pytest.raises(ValueError, match=r"block_size .* max_position_embeddings"):
        distill_pruned(small, base, small_tok, TRAIN, vocab_indices=kept, progress=False, block_size=256)
    # The text's errors call it by distill_pruned's own parameter, not compact_prune's.
    with pytest.raises(ValueError, match=r"^train_data is empty"):
        distill_pruned(small, base, small_tok, ["", "  "], vocab_indices=kept, progress=False, **FAST)
    with pytest.raises(ValueError, match=r"^train_data file 'missing.txt' does not exist"):
        distill_pruned(small, base, small_tok, "missing.txt", vocab_indices=kept, progress=False, **FAST)
    with pytest.raises(TypeError, match=r"^train_data must be a datasets.Dataset"):
        distill_pruned(small, base, small_tok, 3, vocab_indices=kept, progress=False, **FAST)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_tokens", 100, "less than one optimizer step"),
        ("batch_size", 6, "multiple of micro_batch_size"),
        ("block_size", 0, "block_size must be a positive integer"),
        ("learning_rate", 0.0, "learning_rate must be > 0"),
        ("lr_scheduler_type", "polynomial", "lr_scheduler_type must be one of"),
        ("alpha", 1.5, r"alpha must lie in \[0, 1\]"),
        ("pool_tokens", 10, "pool_tokens must be None or at least"),
    ],
)
def test_distill_config_names_the_bad_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(**{field: value})


def test_distill_config_round_trips():
    config = DistillConfig(max_tokens=8192, learning_rate=3e-5, seed=2)
    assert DistillConfig(**config.to_dict()) == config
    assert (config.max_steps, config.trained_tokens) == (4, 8192)
