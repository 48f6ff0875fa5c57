"""Projected compression as a PEFT method: PEFT's entry points, the Hub route, TRL's SFT and DPO trainers."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import trl
from datasets import Dataset
from peft import AutoPeftModelForCausalLM, PeftConfig, PeftModel, PeftModelForCausalLM, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from hf_projcomp import ProjCompConfig, ProjCompModel, ProjCompTrainerMixin, get_projcomp_model
from hf_projcomp.architectures import ARCHITECTURES
from hf_projcomp.projection import unwrap
from tests.scripts import peft_hub
from tests.test_compact import model_for
from tests.tiny import MODEL_TYPES, fresh_env, target_sizes, tiny_model
from tests.tiny_tokenizers import TRAIN, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
TARGET = dict(hidden_size=48, intermediate_size=64, importance="magnitude")
LEGACY = Path(__file__).parent / "data" / "legacy_adapter_0.1"


def nudged(pc, seed: int = 0):
    """Every trainable tensor moved off its initial value, so a reload that drops or misplaces one shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unwrap(pc).trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.01)
    return pc


def logits(model, input_ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def assert_same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def saved_base(model_type: str, path: Path):
    """A tiny base saved as a model directory and loaded from it, as a Hub model is (name_or_path set)."""
    tiny_model(model_type).save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path)


# -- PEFT's entry points ------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_peft_get_peft_model_equals_get_projcomp_model(model_type, input_ids):
    via_peft = get_peft_model(
        tiny_model(model_type), ProjCompConfig(**target_sizes(model_type), importance="magnitude")
    )
    ours = get_projcomp_model(
        tiny_model(model_type), ProjCompConfig(**target_sizes(model_type), importance="magnitude"), progress=False
    )
    assert type(via_peft) is type(ours) is PeftModelForCausalLM
    assert isinstance(via_peft.base_model, ProjCompModel) and via_peft.get_base_model() is via_peft.base_model.model
    assert torch.equal(logits(via_peft, input_ids), logits(ours, input_ids))
    assert_same_weights(via_peft.merge_and_unload(), ours.merge_and_unload())


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_save_then_peft_loaders_reproduce_the_model_exactly(model_type, input_ids, tmp_path):
    base_dir, adapter = tmp_path / "base", tmp_path / "adapter"
    target = target_sizes(model_type)
    pc = nudged(get_peft_model(saved_base(model_type, base_dir), ProjCompConfig(**target, importance="magnitude")))
    expected, merged = logits(pc, input_ids), pc.merge_and_unload()
    pc.save_pretrained(adapter)

    config = PeftConfig.from_pretrained(adapter)
    assert isinstance(config, ProjCompConfig) and config.peft_type == "PROJCOMP"
    assert config.base_model_name_or_path == str(base_dir.resolve())
    # Small and readable: the selections are tensors in the weights file, not JSON lists.
    text = (adapter / "adapter_config.json").read_text()
    assert len(text) < 3000 and "indices" not in text and json.loads(text)["hidden_size"] == target["hidden_size"]
    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        assert f.get_tensor("base_model.selection_hidden").dtype == torch.int64
        experts = ARCHITECTURES[model_type].ffn_groups(pc.base_model.model.config)
        assert f.get_tensor("base_model.selection_ffn").shape == (2, *experts, 64)

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter)
    assert torch.equal(logits(reloaded, input_ids), expected)
    auto = AutoPeftModelForCausalLM.from_pretrained(adapter)  # the base found through the adapter config
    assert torch.equal(logits(auto, input_ids), expected)
    assert_same_weights(auto.merge_and_unload(), merged)
    trainable = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter, is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] == pc.get_nb_trainable_parameters()[0] > 0


def test_a_base_from_the_hub_cache_is_recorded_by_repo_id_and_commit(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / commit
    config = get_peft_model(saved_base("llama", snapshot), ProjCompConfig(**TARGET)).peft_config["default"]
    assert (config.base_model_name_or_path, config.revision) == ("org/tiny", commit)
    assert config.base_model_local_path == str(snapshot.resolve())


def test_saving_an_adapter_of_a_hub_base_asks_nothing_of_the_hub(tmp_path, monkeypatch, input_ids, recwarn):
    """The demo's adapters record google/gemma-3-270m: PEFT's save would look that config up on the Hub
    (offline: "Unable to fetch remote file", "Could not find a config file") to decide whether to copy
    the base's embedding, which a projected-compression adapter never holds. Quiet, and reloads exactly."""
    import peft.utils.save_and_load as save_and_load

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked during an adapter save")

    monkeypatch.setattr(save_and_load, "check_file_exists_on_hf_hub", no_hub)
    tokenizer = tiny_tokenizer("byte_fallback")
    config = ProjCompConfig(hidden_size=48, intermediate_size=64, vocab_size=450, importance="compact")
    base = model_for("gemma3_text", tokenizer)
    pc = nudged(get_projcomp_model(base, config, calibration_data=TRAIN * 4, tokenizer=tokenizer, progress=False))
    pc.peft_config["default"].base_model_name_or_path = "google/gemma-3-270m"  # as the demo records it
    ids = pc.base_model.tokenizer(TRAIN[0], return_tensors="pt").input_ids
    expected = logits(pc, ids)
    recwarn.clear()
    pc.save_pretrained(tmp_path)
    assert [str(w.message) for w in recwarn] == []
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "embed_tokens.weight" in k or "lm_head.weight" in k]
    reloaded = PeftModel.from_pretrained(model_for("gemma3_text", tokenizer), tmp_path)
    assert torch.equal(logits(reloaded, ids), expected)


def test_transformers_loading_an_adapter_folder_says_what_to_call(tmp_path):
    pc = get_peft_model(saved_base("llama", tmp_path / "base"), ProjCompConfig(**TARGET))
    pc.save_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match=r"AutoPeftModelForCausalLM\.from_pretrained"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match=r"cannot be injected into the base model in place"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "base").load_adapter(str(tmp_path / "adapter"))


def test_adapters_written_by_version_0_1_still_load(tmp_path):
    """``tests/data/legacy_adapter_0.1`` (see its README): JSON-list selections, keys without
    ``base_model.``, a pruned tokenizer. Loaded, every tensor lands where it belongs; saved again, it
    takes the current format and reloads exactly."""
    tokenizer = tiny_tokenizer("byte_fallback")
    pc = PeftModel.from_pretrained(model_for("gemma3_text", tokenizer), LEGACY)
    legacy_config = json.loads((LEGACY / "adapter_config.json").read_text())
    selection = unwrap(pc).selection()
    assert selection.hidden.tolist() == legacy_config["hidden_indices"]
    assert [f.tolist() for f in selection.ffn] == legacy_config["intermediate_indices"]
    assert selection.vocab.tolist() == legacy_config["vocab_indices"]
    state = pc.state_dict()
    legacy = load_file(LEGACY / "adapter_model.safetensors")
    for name, tensor in legacy.items():
        new = (
            "base_model." + name
            if name.startswith("projections.")
            else "base_model.compressed." + name.removeprefix("target.")
        )
        assert torch.equal(state[new], tensor), name
    assert unwrap(pc).tokenizer.get_vocab() == AutoTokenizer.from_pretrained(LEGACY).get_vocab()

    ids = unwrap(pc).tokenizer(TRAIN[0], return_tensors="pt").input_ids
    pc.save_pretrained(tmp_path / "current")
    assert "indices" not in (tmp_path / "current" / "adapter_config.json").read_text()
    again = PeftModel.from_pretrained(model_for("gemma3_text", tokenizer), tmp_path / "current")
    assert torch.equal(logits(again, ids), logits(pc, ids))


# -- the Hub ------------------------------------------------------------------------------------
def test_hub_route_push_one_commit_then_load_by_repo_id(tiny_base_dir, tmp_path):
    """Offline, at the huggingface_hub boundary (see ``tests/scripts/peft_hub.py``): ``push_to_hub`` makes
    one commit holding the adapter and its tokenizer; ``PeftModel.from_pretrained(base, repo_id)`` and
    ``AutoPeftModelForCausalLM.from_pretrained(repo_id)`` resolve it through ``hf_hub_download`` in a fresh
    process and give exactly the pushed model's logits."""
    cache, out = tmp_path / "hub", tmp_path / "out"
    cache.mkdir()
    out.mkdir()
    env = {**fresh_env(), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    for mode in ("push", "load"):
        subprocess.run(
            [sys.executable, peft_hub.__file__, mode, str(cache), str(tiny_base_dir), str(out)],
            check=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )
    commits = [json.loads(line) for line in (out / "commits.jsonl").read_text().splitlines()]
    assert len(commits) == 1 and commits[0]["repo_id"] == "me/tiny-pc"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= set(
        commits[0]["files"]
    )
    pushed_config = json.loads(next(cache.glob("models--me--tiny-pc/snapshots/*/adapter_config.json")).read_text())
    assert pushed_config["base_model_name_or_path"] == "me/tiny-base"
    resolved = {tuple(r) for r in json.loads((out / "resolved.json").read_text())}
    assert {("me/tiny-pc", "adapter_config.json"), ("me/tiny-pc", "adapter_model.safetensors")} <= resolved
    expected, found = load_file(out / "expected.safetensors")["logits"], load_file(out / "found.safetensors")
    assert set(found) == {"peft_model", "auto_peft_model"}
    for route, got in found.items():
        assert torch.equal(got, expected), route


# -- training through Trainer and TRL -----------------------------------------------------------
class ProjCompSFTTrainer(ProjCompTrainerMixin, trl.SFTTrainer):
    """What the README tells TRL users to write."""


@pytest.fixture
def sft_setup():
    return tiny_tokenizer("byte_level"), Dataset.from_dict({"text": TRAIN})


def trainer_tokenizer(tokenizer):
    # SFTTrainer sets pad_token on the tokenizer it is given; bases built from the original stay alike.
    return copy.deepcopy(tokenizer)


def sft_args(out: Path, **overrides) -> trl.SFTConfig:
    args = dict(
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=3,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        max_length=32,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        save_strategy="no",
        logging_steps=1,
        max_grad_norm=0.05,
    )
    return trl.SFTConfig(str(out), **{**args, **overrides})


def count_materialize(monkeypatch) -> list:
    calls: list = []
    materialize = ProjCompModel.materialize
    monkeypatch.setattr(ProjCompModel, "materialize", lambda self: (calls.append(1), materialize(self))[1])
    return calls


def test_sft_trainer_with_peft_config_trains_with_the_amortised_step(sft_setup, monkeypatch, tmp_path):
    tokenizer, data = sft_setup
    calls = count_materialize(monkeypatch)
    trainer = ProjCompSFTTrainer(
        model=model_for("qwen2", tokenizer),
        peft_config=ProjCompConfig(**TARGET),
        args=sft_args(tmp_path / "run"),
        train_dataset=data,
        processing_class=trainer_tokenizer(tokenizer),
    )
    assert trainer.args.bf16  # TRL's default: the projections still compute W_c in float32
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert len(calls) == 3  # once per optimizer step, not per micro-batch (accumulation 2)
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if "selection" not in k)
    # The logged learning rate is the one asked for (A's), not P's smaller one.
    assert [log["learning_rate"] for log in trainer.state.log_history if "loss" in log] == [1e-3] * 3

    trainer.save_model(tmp_path / "saved")
    reloaded = PeftModel.from_pretrained(model_for("qwen2", tokenizer), tmp_path / "saved")
    ids = tokenizer(TRAIN[1], return_tensors="pt").input_ids
    trained = trainer.model.merge_and_unload()
    assert torch.equal(logits(reloaded.merge_and_unload(), ids), logits(trained, ids))


def test_amortised_step_under_trl_equals_autograd(sft_setup, tmp_path):
    """The mixin's once-per-step W_c == autograd through every micro-batch's product, which TRL's plain
    SFTTrainer runs without checkpointing; with gradient checkpointing (TRL's default, reentrant or not)
    both trainers still give the same parameters. 3 steps, accumulation 2, clipping active."""
    tokenizer, data = sft_setup

    def train(cls, checkpointing, **kwargs):
        args = sft_args(
            tmp_path / f"{cls.__name__}-{checkpointing}",
            bf16=False,
            gradient_checkpointing=bool(checkpointing),
            gradient_checkpointing_kwargs={"use_reentrant": checkpointing == "reentrant"},
        )
        trainer = cls(
            model=model_for("qwen2", tokenizer),
            peft_config=ProjCompConfig(**TARGET),
            args=args,
            train_dataset=data,
            processing_class=trainer_tokenizer(tokenizer),
            **kwargs,
        )
        trainer.train()
        return trainer.model.state_dict()

    autograd = train(trl.SFTTrainer, checkpointing=None)
    initial = get_peft_model(model_for("qwen2", tokenizer), ProjCompConfig(**TARGET)).state_dict()
    assert max((autograd[k].float() - initial[k].float()).abs().max().item() for k in autograd) > 1e-3  # it trained
    runs = {f"plain SFTTrainer, {c} checkpointing": train(trl.SFTTrainer, c) for c in ("reentrant", "non-reentrant")}
    for checkpointing in (None, "reentrant", "non-reentrant"):
        runs[f"mixin, {checkpointing} checkpointing"] = train(
            ProjCompSFTTrainer, checkpointing, projection_learning_rate=1e-3
        )
    for name, state in runs.items():
        assert state.keys() == autograd.keys()
        assert max((state[k].float() - autograd[k].float()).abs().max().item() for k in autograd) <= 1e-5, name


def test_plain_trainer_save_model_and_checkpoints_reload(input_ids, tmp_path):
    base_dir = tmp_path / "base"
    pc = get_projcomp_model(saved_base("llama", base_dir), ProjCompConfig(**TARGET), progress=False)
    ids = torch.randint(3, 96, (8, 16), generator=torch.Generator().manual_seed(0)).tolist()
    args = TrainingArguments(
        str(tmp_path / "run"),
        per_device_train_batch_size=2,
        max_steps=2,
        save_steps=2,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=pc, args=args, train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}))
    trainer.train()
    trainer.save_model(tmp_path / "final")
    expected = logits(pc, input_ids)
    for folder in (tmp_path / "final", tmp_path / "run" / "checkpoint-2"):
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), folder)
        assert torch.equal(logits(reloaded, input_ids), expected), folder.name


def test_dpo_trainer_with_our_config_uses_the_base_as_reference(sft_setup, tmp_path):
    """TRL's DPOTrainer takes its reference from the model with the adapter disabled, which runs the
    base model's own forward; two steps run, and the saved adapter reloads and merges."""
    tokenizer, _ = sft_setup
    data = Dataset.from_dict(
        {
            "prompt": [t[:20] for t in TRAIN[:4]],
            "chosen": [t[20:40] for t in TRAIN[:4]],
            "rejected": [t[40:60] for t in TRAIN[:4]],
        }
    )
    args = trl.DPOConfig(
        str(tmp_path / "run"),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        max_length=64,
        bf16=False,
    )
    trainer = trl.DPOTrainer(
        model=model_for("qwen2", tokenizer),
        args=args,
        train_dataset=data,
        processing_class=trainer_tokenizer(tokenizer),
        peft_config=ProjCompConfig(**TARGET),
    )
    base, ids = model_for("qwen2", tokenizer), tokenizer(TRAIN[1], return_tensors="pt").input_ids
    with trainer.model.disable_adapter():
        assert torch.equal(logits(trainer.model, ids), logits(base, ids))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    trainer.save_model(tmp_path / "saved")
    reloaded = PeftModel.from_pretrained(model_for("qwen2", tokenizer), tmp_path / "saved")
    assert torch.equal(logits(reloaded.merge_and_unload(), ids), logits(trainer.model.merge_and_unload(), ids))
