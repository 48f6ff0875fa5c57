"""Importance scores rank what they claim to rank, and calibration input forms agree."""

from __future__ import annotations

import datasets
import pytest
import torch

from hf_projcomp import ProjCompConfig, get_projcomp_model
from hf_projcomp.architectures import get_arch_spec
from hf_projcomp.importance import (
    activation_importance,
    activation_statistics,
    calibration_batches,
    magnitude_importance,
)
from hf_projcomp.plan import build_plan
from tests.tiny import TINY, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_magnitude_drops_dead_dimensions(model_type):
    """Zero every weight row/column on some d_model and d_ff indices (located from the parameter
    shapes, not from the plan): magnitude scores them 0 and the selection drops them."""
    model = tiny_model(model_type)
    spec = get_arch_spec(model.config)
    dead_hidden = [] if spec.fixed_hidden(model.config) else [3, 17, 40]
    dead_ffn, d, ffn = [5, 6, 90], TINY["hidden_size"], TINY["intermediate_size"]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() < 2:
                continue
            for dim, size in list(enumerate(p.shape))[-2:]:  # an experts dimension leads
                dead = dead_hidden if size == d else dead_ffn if size % ffn == 0 and "mlp" in name else []
                for chunk in range(size // ffn if dead is dead_ffn else 1):  # fused gate_up holds two
                    p.index_fill_(dim, torch.tensor(dead, dtype=torch.long) + chunk * ffn, 0)
    scores = magnitude_importance(model, build_plan(model, spec, d))
    if dead_hidden:
        assert scores.hidden[dead_hidden].abs().max() == 0 and scores.hidden.min() == 0
    hidden = d if dead_hidden == [] else 56
    sel = get_projcomp_model(
        model, ProjCompConfig(hidden_size=hidden, intermediate_size=88, importance="magnitude")
    ).selection()
    assert not set(dead_hidden) & set(sel.hidden.tolist())
    for layer in sel.ffn:
        assert not set(dead_ffn) & set(layer.flatten().tolist())


def test_padded_dataset_equals_unpadded_batches():
    model = tiny_model("qwen2")
    spec = get_arch_spec(model.config)
    gen = torch.Generator().manual_seed(3)
    rows = [torch.randint(3, TINY["vocab_size"], (n,), generator=gen).tolist() for n in (5, 9, 7)]
    padded = activation_importance(
        model, spec, calibration_batches(datasets.Dataset.from_dict({"input_ids": rows})), progress=False
    )
    separate = activation_importance(model, spec, calibration_batches(rows), progress=False)
    assert len(calibration_batches(datasets.Dataset.from_dict({"input_ids": rows}))) == 1
    assert torch.allclose(padded.hidden, separate.hidden, rtol=1e-5)
    assert torch.allclose(padded.ffn, separate.ffn, rtol=1e-5)


def test_activation_ffn_scores_are_down_proj_input_magnitudes():
    model = tiny_model("llama")
    ids = torch.randint(3, TINY["vocab_size"], (1, 10), generator=torch.Generator().manual_seed(4))
    captured = []
    hook = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    with torch.no_grad():
        model(input_ids=ids)
    hook.remove()
    scores = activation_importance(model, get_arch_spec(model.config), calibration_batches(ids), progress=False)
    assert torch.allclose(scores.ffn[1], captured[0].abs().sum(dim=(0, 1)).double(), rtol=1e-5)
    squared = activation_importance(
        model,
        get_arch_spec(model.config),
        calibration_batches(ids),
        power=2,
        token_weight=lambda t: (t % 2).double(),
        progress=False,
    )
    weight = (ids % 2).double().unsqueeze(-1)
    assert torch.allclose(squared.ffn[1], (captured[0].double().pow(2) * weight).sum(dim=(0, 1)), rtol=1e-5)


def test_predicted_mass_sums_next_token_probabilities_where_mass_weight_says():
    """Position t's prediction counts with the weight of the token at t+1; padding and the last
    position (nothing follows) count nothing."""
    model = tiny_model("llama")
    rows = [
        torch.randint(3, TINY["vocab_size"], (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (12, 7)
    ]
    with torch.no_grad():
        probs = [model(input_ids=torch.tensor([r])).logits[0].double().softmax(-1) for r in rows]
    spec, vocab = get_arch_spec(model.config), model.config.vocab_size
    everywhere = activation_statistics(
        model, spec, calibration_batches(rows), predicted_mass=True, progress=False
    ).predicted_mass
    assert everywhere is not None and everywhere.shape == (vocab,) and everywhere.dtype == torch.float64
    assert torch.allclose(everywhere, sum(p[:-1].sum(0) for p in probs), rtol=1e-4)
    assert everywhere.sum().item() == pytest.approx(11 + 6, rel=1e-5)

    odd_next = activation_statistics(
        model,
        spec,
        calibration_batches(rows),
        predicted_mass=True,
        progress=False,
        mass_weight=lambda nxt: nxt % 2 == 1,
    ).predicted_mass
    assert odd_next is not None
    expected = sum((torch.tensor(r[1:]) % 2 == 1).double() @ p[:-1] for r, p in zip(rows, probs, strict=True))
    assert torch.allclose(odd_next, expected, rtol=1e-4)
    assert 0 < odd_next.sum() < everywhere.sum()


def test_activation_statistics_returns_what_it_is_asked_for():
    """activation_importance is activation_statistics' scores; the predicted mass and the Gram matrices
    come back only when asked, the Gram's diagonal being the act² scores of the same positions."""
    model = tiny_model("llama")
    spec = get_arch_spec(model.config)
    ids = torch.randint(3, TINY["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(5))
    plain = activation_statistics(model, spec, calibration_batches(ids), progress=False)
    assert plain.predicted_mass is None and plain.ffn_gram is None
    scores = activation_importance(model, spec, calibration_batches(ids), progress=False)
    assert torch.equal(scores.hidden, plain.scores.hidden) and torch.equal(scores.ffn, plain.scores.ffn)
    weight = lambda t: (t % 3 > 0).double()  # noqa: E731
    stats = activation_statistics(
        model, spec, calibration_batches(ids), power=2, token_weight=weight, ffn_gram=True, progress=False
    )
    assert stats.ffn_gram is not None and stats.ffn_gram.dtype == torch.float32
    d_ff = TINY["intermediate_size"]
    assert stats.ffn_gram.shape == (TINY["num_hidden_layers"], d_ff, d_ff)
    torch.testing.assert_close(stats.ffn_gram.diagonal(dim1=1, dim2=2).double(), stats.scores.ffn, rtol=1e-4, atol=1e-6)
    moe = tiny_model("mixtral")
    with pytest.raises(ValueError, match="ffn_gram is for dense FFNs"):
        activation_statistics(moe, get_arch_spec(moe.config), calibration_batches(ids), ffn_gram=True)


@pytest.mark.parametrize(
    "data",
    [
        torch.zeros(2, 4, dtype=torch.long),
        [[1, 2, 3], [4, 5]],
        [1, 2, 3],
        [{"input_ids": [[1, 2, 3]], "attention_mask": [[1, 1, 0]]}],
    ],
)
def test_calibration_forms(data):
    batches = calibration_batches(data)
    assert all(b["input_ids"].dim() == 2 and b["input_ids"].shape == b["attention_mask"].shape for b in batches)


def test_activation_importance_tokenises_text_given_the_tokenizer(tmp_path):
    """Text (strings, a text Dataset, a file) with tokenizer= is tokenised into calibration sequences,
    the same ones tokenize_calibration gives."""
    from hf_projcomp.importance import tokenize_calibration
    from tests.test_compact import model_for
    from tests.tiny_tokenizers import TRAIN, tiny_tokenizer

    tokenizer = tiny_tokenizer("byte_fallback")
    model = model_for("llama", tokenizer)
    texts = TRAIN * 80
    (tmp_path / "calibration.txt").write_text("\n\n".join(texts), encoding="utf-8")
    expected = torch.cat(tokenize_calibration(tokenizer, texts, progress=False))
    assert expected.shape == (32, 512) and (expected[:, 0] == tokenizer.bos_token_id).all()
    config = ProjCompConfig(hidden_size=48, intermediate_size=64, importance="activation")
    reference = get_projcomp_model(
        model, config, calibration_data=[expected[i : i + 8] for i in range(0, 32, 8)], progress=False
    ).selection()
    for data in (texts, datasets.Dataset.from_dict({"text": texts})):
        batches = calibration_batches(data, tokenizer=tokenizer)
        assert torch.equal(torch.cat([b["input_ids"] for b in batches]), expected)
        got = get_projcomp_model(
            model_for("llama", tokenizer), config, calibration_data=data, tokenizer=tokenizer, progress=False
        ).selection()
        assert torch.equal(got.hidden, reference.hidden) and all(map(torch.equal, got.ffn, reference.ffn))
    from_file = calibration_batches(str(tmp_path / "calibration.txt"), tokenizer=tokenizer, num_sequences=4)
    assert torch.cat([b["input_ids"] for b in from_file]).shape == (4, 512)


def test_a_streamed_token_dataset_is_read_only_as_far_as_needed():
    served: list[int] = []

    def rows():
        for i in range(100_000):
            served.append(i)
            yield {"input_ids": [3 + i % 50] * 16}

    batches = calibration_batches(datasets.IterableDataset.from_generator(rows), num_sequences=12)
    assert [b["input_ids"].shape for b in batches] == [(8, 16), (4, 16)] and len(served) <= 13


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe"])
def test_expert_importance_counts_only_the_tokens_routed_to_each_expert(model_type):
    """With every token routed to experts 0 and 1 (weights 0.7/0.3), experts 2 and 3 score zero and
    experts 0 and 1 score exactly Σ |w · act(gate) · up| over the tokens, recomputed here by hand."""
    model = tiny_model(model_type)
    spec = get_arch_spec(model.config)
    ids = torch.randint(3, TINY["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(0))
    inputs = []

    def route(module, args, output):
        logits, _, _ = output
        index = torch.tensor([[0, 1]]).expand(logits.shape[0], 2)
        return logits, torch.tensor([[0.7, 0.3]]).expand(logits.shape[0], 2), index

    handles = []
    for layer in model.get_submodule(spec.layers):
        handles.append(layer.get_submodule("mlp.gate").register_forward_hook(route))
        handles.append(
            layer.get_submodule(spec.experts).register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
        )
    try:
        scores = activation_importance(
            model, spec, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}], progress=False
        )
        assert scores.ffn.shape == (TINY["num_hidden_layers"], 4, TINY["intermediate_size"])
        assert scores.ffn[:, 2:].abs().max() == 0 and (scores.ffn[:, :2].sum(-1) > 0).all()
        for i, layer in enumerate(model.get_submodule(spec.layers)):
            experts = layer.get_submodule(spec.experts)
            for e, weight in ((0, 0.7), (1, 0.3)):
                gate, up = (inputs[i].double() @ experts.gate_up_proj[e].double().T).chunk(2, dim=-1)
                want = (weight * experts.act_fn(gate) * up).abs().sum(0)
                torch.testing.assert_close(scores.ffn[i, e], want, rtol=1e-5, atol=1e-8)
    finally:
        for h in handles:
            h.remove()
