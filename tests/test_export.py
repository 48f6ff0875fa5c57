"""Shipping: model card metadata, verified atomic save, one-commit push (captured offline)."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_projcomp import ProjCompConfig, get_projcomp_model
from hf_projcomp.export import CompressionSummary, VerificationError, push_to_hub, save_compressed
from hf_projcomp.export import save as save_module

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def base(tiny_base_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_base_dir).eval(), AutoTokenizer.from_pretrained(tiny_base_dir)


def summary_for(model, small, **extra) -> CompressionSummary:
    return CompressionSummary.from_configs(
        "projected-compression",
        model.config,
        small.config,
        model.num_parameters(),
        small.num_parameters(),
        base_model="Qwen/Qwen2.5-0.5B",
        settings={"hidden_size": 48},
        calibration_data="wikitext-2 valid",
        calibration_tokens=16384,
        eval_data="WikiText-2 test",
        bits_per_byte_before=1.2345,
        bits_per_byte_after=1.3456,
        **extra,
    )


def test_card_carries_metadata_and_numbers(base, tmp_path):
    model, tokenizer = base
    pc = get_projcomp_model(
        model, ProjCompConfig(hidden_size=48, intermediate_size=64, importance="magnitude"), progress=False
    )
    small = pc.merge_and_unload()
    out = save_compressed(small, tokenizer, tmp_path / "out", summary_for(model, small), repo_id="me/small")
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["base_model"] == "Qwen/Qwen2.5-0.5B" and meta["library_name"] == "transformers"
    assert {"pruned", "projected-compression"} <= set(meta["tags"])
    assert f"| parameters | {model.num_parameters():,} | {small.num_parameters():,}" in card.text
    assert "| `hidden_size` | 64 | 48 |" in card.text and "| `intermediate_size` | 96 | 64 |" in card.text
    assert "| 1.2345 | 1.3456 |" in card.text and "16,384 tokens" in card.text
    assert 'from_pretrained("me/small")' in card.text
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in out.iterdir()
    }


def test_save_merged_writes_a_verified_vanilla_checkpoint(base, tmp_path):
    model, tokenizer = base
    pc = get_projcomp_model(
        model, ProjCompConfig(hidden_size=48, intermediate_size=64, importance="magnitude"), progress=False
    )
    with torch.no_grad():
        for p in pc.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.01)
    out = pc.save_merged(tmp_path / "merged", tokenizer)
    ids = tokenizer("lobsters are blue", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = pc(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert ModelCard.load(out / "README.md").data.to_dict()["tags"][:2] == ["pruned", "projected-compression"]


def test_interrupted_save_leaves_nothing_that_looks_complete(base, tmp_path, monkeypatch):
    model, tokenizer = base

    def crash(*args, **kwargs):  # the weights and tokenizer are written by now; the card is not
        raise KeyboardInterrupt

    monkeypatch.setattr(save_module, "render_model_card", crash)
    with pytest.raises(KeyboardInterrupt):
        save_compressed(model, tokenizer, tmp_path / "out", summary_for(model, model))
    assert list(tmp_path.iterdir()) == []


def test_corrupted_output_fails_verification(base, tmp_path, monkeypatch):
    model, tokenizer = base
    write = save_module.write_checkpoint

    def write_then_corrupt(model, tokenizer, directory, *args, **kwargs):
        write(model, tokenizer, directory, *args, **kwargs)
        weights = load_file(directory / "model.safetensors")
        name = next(k for k in weights if "mlp" in k)
        weights[name] = weights[name] + 0.5
        save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})

    monkeypatch.setattr(save_module, "write_checkpoint", write_then_corrupt)
    with pytest.raises(VerificationError, match="reloaded logits differ"):
        save_compressed(model, tokenizer, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(base, tmp_path):
    model, tokenizer = base
    save_compressed(model, tokenizer, tmp_path / "out")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_compressed(model, tokenizer, tmp_path / "out")
    save_compressed(model, tokenizer, tmp_path / "out", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_push_is_one_commit_with_every_file_and_our_card(base, tmp_path, monkeypatch):
    model, tokenizer = base
    out = save_compressed(model, tokenizer, tmp_path / "out", summary_for(model, model))
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw)))

    def create_commit(self, repo_id, operations, **kw):
        files = {
            op.path_in_repo: op.path_or_fileobj
            if isinstance(op.path_or_fileobj, bytes)
            else open(op.path_or_fileobj, "rb").read()
            for op in operations
        }
        calls.append(("create_commit", repo_id, files, kw))
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    assert push_to_hub(out, "me/small", private=True, token="hf_x") == "commit-info"
    assert [c[0] for c in calls] == ["create_repo", "create_commit"]
    assert calls[0][2]["private"] is True
    _, repo_id, files, kw = calls[1]
    assert repo_id == "me/small" and kw["repo_type"] == "model"
    assert set(files) == {p.name for p in out.iterdir()}
    assert all(files[name] == (out / name).read_bytes() for name in files if name != "README.md")
    # the card's usage snippet named the directory; the uploaded one loads the repo
    assert 'from_pretrained("out")' in (out / "README.md").read_text()
    assert files["README.md"] == (out / "README.md").read_bytes().replace(b'"out"', b'"me/small"')


def test_push_refuses_an_incomplete_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a saved compressed model"):
        push_to_hub(tmp_path, "me/small")


def test_card_links_only_to_what_exists(base, tmp_path):
    import re

    from hf_projcomp import __version__
    from hf_projcomp.export.card import render_model_card

    model, _ = base
    card = render_model_card(summary_for(model, model), repo_id="me/small")
    links = re.findall(r"https?://[^\s)\]]+", card.text)
    assert links and all(link.startswith("https://arxiv.org/abs/") for link in links), links
    assert f"compressed with hf_projcomp {__version__}" in card.text


def test_special_tokens_that_disagree_with_the_config_fail_the_save(base, tmp_path):
    """config.pad_token_id must name the tokenizer's pad token; a mismatch is caught before publishing."""
    model, tokenizer = base
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tokenizer.pad_token = tokenizer.eos_token  # the usual idiom...
    model.config.pad_token_id = 5  # ...with a config that still points elsewhere
    with pytest.raises(
        VerificationError, match=r"config.pad_token_id = 5 names \['.*'\], but the tokenizer's pad_token"
    ):
        save_compressed(model, tokenizer, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = save_compressed(model, tokenizer, tmp_path / "out")
    assert AutoTokenizer.from_pretrained(out).pad_token == tokenizer.eos_token


def test_bfloat16_model_is_saved_in_bfloat16(base, tmp_path):
    model, tokenizer = base
    small = get_projcomp_model(
        model.to(torch.bfloat16),
        ProjCompConfig(hidden_size=48, intermediate_size=64, importance="magnitude"),
        progress=False,
    ).merge_and_unload()
    out = save_compressed(small, tokenizer, tmp_path / "bf16")
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    out32 = save_compressed(small.float(), tokenizer, tmp_path / "fp32")
    ratio = (out / "model.safetensors").stat().st_size / (out32 / "model.safetensors").stat().st_size
    assert 0.49 < ratio < 0.51


def test_push_checks_the_directory_before_uploading(base, tmp_path, monkeypatch):
    model, tokenizer = base
    out = save_compressed(model, tokenizer, tmp_path / "out", summary_for(model, model))
    config = (out / "config.json").read_text()
    (out / "config.json").write_text(config.replace(f'"vocab_size": {model.config.vocab_size}', '"vocab_size": 50'))
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: pytest.fail("reached the network"))
    with pytest.raises(VerificationError, match="vocab_size is 50"):
        push_to_hub(out, "me/small")


@pytest.mark.parametrize("origin", ["demo", "card", "unknown"])
def test_card_says_where_the_base_weights_came_from_and_its_licence(tiny_base_dir, tmp_path, origin):
    """A base converted by the demo (its marker file) is named as the dequantised Q4_K_M GGUF with the
    Gemma licence; a local base whose own card declares a licence passes it on; otherwise the card
    sends the reader to the base's card. No GGUF name leaks into config.json."""
    import json
    import shutil

    from hf_projcomp.model_ids import DEMO_MARKER

    base_dir = tmp_path / "base"
    shutil.copytree(tiny_base_dir, base_dir)
    config = json.loads((base_dir / "config.json").read_text())
    (base_dir / "config.json").write_text(json.dumps({**config, "_model_name_or_path": "Tiny 3 1m"}))
    if origin == "demo":
        (base_dir / DEMO_MARKER).write_text("{}")
    elif origin == "card":
        (base_dir / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(base_dir).eval(), AutoTokenizer.from_pretrained(base_dir)
    pc = get_projcomp_model(
        model, ProjCompConfig(hidden_size=48, intermediate_size=64, importance="magnitude"), progress=False
    )
    out = pc.save_merged(tmp_path / "out", tokenizer)
    card = ModelCard.load(out / "README.md")
    expected = {"demo": "gemma", "card": "apache-2.0", "unknown": None}[origin]
    assert card.data.to_dict().get("license") == expected
    assert ("dequantised to float32" in card.text) == (origin == "demo")
    assert "## License" in card.text and ("see the base model's card" in card.text) == (expected is None)
    assert "_model_name_or_path" not in json.loads((out / "config.json").read_text())
