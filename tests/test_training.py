"""Training projections through transformers.Trainer: the amortised step, DDP, resume, distillation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

from hf_projcomp import ProjCompConfig, ProjCompTrainer, get_projcomp_model
from hf_projcomp.training import Teacher, distillation_kl
from hf_projcomp.training.trainer import DEFAULT_PROJECTION_LR_RATIO
from tests.scripts import train_tiny
from tests.tiny import MODEL_TYPES, target_sizes, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
SCRIPT = Path(train_tiny.__file__)


def tiny_data(n: int = 8, length: int = 16) -> Dataset:
    ids = torch.randint(3, 96, (n, length), generator=torch.Generator().manual_seed(0))
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def projected(model_type: str = "llama", **config):
    config = {**target_sizes(model_type), **config}
    return get_projcomp_model(
        tiny_model(model_type), ProjCompConfig(**{"importance": "magnitude", **config}), progress=False
    )


def training_args(out, **overrides) -> TrainingArguments:
    args = dict(
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=4,
        learning_rate=1e-3,
        max_grad_norm=0.05,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        weight_decay=0.0,
        logging_steps=1,
    )
    return TrainingArguments(str(out), **{**args, **overrides})


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_amortized_step_equals_per_microbatch_autograd(model_type, tmp_path):
    """W_c once per step + one gradient push == a plain Trainer's autograd through every micro-batch,
    with accumulation 2 and clipping active (max_grad_norm far below the gradient norm)."""
    initial = projected(model_type).state_dict()
    naive, amortized = projected(model_type), projected(model_type)
    plain = Trainer(model=naive, args=training_args(tmp_path / "a"), train_dataset=tiny_data())
    plain.train()
    # One LR for every parameter, as the plain Trainer has.
    ours = ProjCompTrainer(
        model=amortized, args=training_args(tmp_path / "b"), train_dataset=tiny_data(), projection_learning_rate=1e-3
    )
    ours.train()
    grad_norms = [log["grad_norm"] for log in ours.state.log_history if "grad_norm" in log]
    assert grad_norms and min(grad_norms) > 0.05  # clipping did act
    assert max_diff(naive.state_dict(), initial) > 1e-3  # training moved the adapter
    assert max_diff(naive.state_dict(), amortized.state_dict()) <= 1e-5


def test_projection_learning_rate_and_no_decay_on_norms(tmp_path):
    pc = projected()
    trainer = ProjCompTrainer(
        model=pc,
        args=training_args(tmp_path, weight_decay=0.1),
        train_dataset=tiny_data(),
        projection_learning_rate=5e-3,
    )
    corrections, projections, norms = trainer.create_optimizer().param_groups
    assert projections["lr"] == 5e-3 and projections["weight_decay"] == 0.1
    assert corrections["lr"] == 1e-3 and corrections["weight_decay"] == 0.1
    assert norms["lr"] == 1e-3 and norms["weight_decay"] == 0.0
    names = {id(p): n for n, p in pc.projections.named_parameters()}
    assert {names[id(p)].rsplit(".", 1)[-1] for p in projections["params"]} == {"p_in", "p_out"}
    assert {names[id(p)].rsplit(".", 1)[-1] for p in corrections["params"]} == {"a"}
    assert len(projections["params"]) + len(corrections["params"]) == len(names)
    assert len(norms["params"]) > 0 and all(p.dim() == 1 for p in norms["params"])
    default = ProjCompTrainer(model=pc, args=training_args(tmp_path, weight_decay=0.1), train_dataset=tiny_data())
    assert default.create_optimizer().param_groups[1]["lr"] == pytest.approx(1e-3 * DEFAULT_PROJECTION_LR_RATIO)


def test_two_processes_equal_each_other_and_one_process(tmp_path):
    """accelerate launch, 2 CPU processes (gloo DDP), same global batch as the 1-process run."""
    single = train_tiny.main([str(tmp_path / "one")]).state_dict()
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(SCRIPT),
        str(tmp_path / "two"),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = (load_file(tmp_path / "two" / f"rank{r}.safetensors") for r in (0, 1))
    assert max_diff(rank0, rank1) == 0.0
    assert max_diff(rank0, single) <= 1e-5


def test_resume_equals_uninterrupted_run(tmp_path):
    uninterrupted = train_tiny.main([str(tmp_path / "full"), "--steps", "4", "--save-steps", "2"]).state_dict()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.pt",
        "rng_state.pth",
        "scheduler.pt",
        "trainer_state.json",
        "training_args.bin",
    ]
    # Adapter only: no base weights in the checkpoint.
    assert set(load_file(checkpoint / "adapter_model.safetensors")) == set(uninterrupted)
    assert all(k.startswith("base_model.") for k in uninterrupted)
    resumed = train_tiny.main([str(tmp_path / "resumed"), "--steps", "4", "--resume", str(checkpoint)]).state_dict()
    assert max_diff(uninterrupted, resumed) == 0.0


def test_resume_rejects_other_selections(tmp_path):
    train_tiny.main([str(tmp_path / "run"), "--steps", "2", "--save-steps", "2"])
    other = projected(hidden_size=32)
    trainer = ProjCompTrainer(model=other, args=training_args(tmp_path / "x", max_steps=3), train_dataset=tiny_data())
    with pytest.raises(ValueError, match="other selections"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))


def test_plain_trainer_checkpoints_hold_the_adapter_only(tmp_path):
    pc = projected("gemma3_text")  # tied: a full state dict would share storage and fail to save
    Trainer(
        model=pc, args=training_args(tmp_path, save_strategy="steps", save_steps=2), train_dataset=tiny_data()
    ).train()
    checkpoint = next(tmp_path.glob("checkpoint-2"))
    saved = load_file(checkpoint / "adapter_model.safetensors")
    assert set(saved) == {f"base_model.{k}" for k in pc.adapter_state_dict()}
    assert (checkpoint / "adapter_config.json").is_file()  # reloadable: PEFT saved it


def test_bf16_base_weights_train(tmp_path):
    pc = projected(base_dtype="bfloat16")
    assert pc.model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    before = {k: v.clone() for k, v in pc.state_dict().items()}
    trainer = ProjCompTrainer(model=pc, args=training_args(tmp_path, max_steps=2), train_dataset=tiny_data())
    trainer.train()
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in trainer.state.log_history if "loss" in log)
    assert all(v.dtype == torch.float32 for v in pc.trainable_parameters())  # indices are saved as int64
    assert max_diff(pc.state_dict(), before) > 0


def test_non_finite_loss_stops_training(tmp_path):
    pc = projected()
    with torch.no_grad():
        next(iter(pc.projections.values())).a.fill_(float("nan"))
    trainer = ProjCompTrainer(model=pc, args=training_args(tmp_path), train_dataset=tiny_data())
    with pytest.raises(FloatingPointError, match="training loss is nan at step 0: stopping"):
        trainer.train()


def test_distillation_loss_is_the_documented_mix(tmp_path):
    """alpha=1, T=2: the training loss is T²·KL(teacher ‖ student) averaged over scored positions."""
    pc = projected()
    batch = {k: torch.tensor(v[:2]) for k, v in tiny_data()[:2].items()}
    trainer = ProjCompTrainer(
        model=pc, args=training_args(tmp_path), train_dataset=tiny_data(), distill_alpha=1.0, distill_temperature=2.0
    )
    pc.train()
    loss = trainer.compute_loss(pc, dict(batch))
    with torch.no_grad():
        student = pc(**batch).logits[:, :-1] / 2
        teacher = pc.model(input_ids=batch["input_ids"]).logits[:, :-1] / 2
    kl = (teacher.softmax(-1) * (teacher.log_softmax(-1) - student.log_softmax(-1))).sum(-1).mean()
    assert torch.allclose(loss, 4 * kl, rtol=1e-5)
    assert trainer.teacher_seconds > 0


@pytest.mark.parametrize("model_type", ["gemma3_text", "gemma2", "granite"])
def test_teacher_on_a_pruned_vocabulary_is_the_base_restricted_to_kept_tokens(model_type):
    """Through the base's own head path: Gemma-2's logit softcapping and Granite's logits scaling apply."""
    from tests.test_compact import model_for
    from tests.tiny_tokenizers import HELD_OUT, TRAIN, tiny_tokenizer

    tokenizer = tiny_tokenizer("byte_fallback")
    model = model_for(model_type, tokenizer)
    model.config.logits_scaling = 4.0  # granite's (read at every forward); other families ignore it
    config = ProjCompConfig(hidden_size=48, intermediate_size=64, vocab_size=450, importance="compact")
    pc = get_projcomp_model(model, config, calibration_data=TRAIN * 4, tokenizer=tokenizer, progress=False)
    kept = pc.selection().vocab
    new_ids = pc.tokenizer(HELD_OUT[0], return_tensors="pt").input_ids
    assert getattr(model.config, "final_logit_softcapping", None) or model_type != "gemma2"
    with torch.no_grad():
        expected = model(input_ids=kept[new_ids]).logits[..., kept]
    assert torch.allclose(Teacher(model, kept.tolist()).logits(new_ids), expected, atol=1e-5)
    kl, positions = distillation_kl(expected, expected, new_ids)
    assert positions == new_ids.shape[1] - 1 and abs(kl.item()) < 1e-4


def test_trainer_rejects_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="model must be a projected-compression model"):
        ProjCompTrainer(model=tiny_model("llama"), args=training_args(tmp_path))
    with pytest.raises(ValueError, match="distill_alpha must lie in"):
        ProjCompTrainer(model=projected(), args=training_args(tmp_path), distill_alpha=1.5)
    with pytest.raises(ValueError, match="distill_temperature"):
        ProjCompTrainer(model=projected(), args=training_args(tmp_path), distill_temperature=0)


def test_trainer_refuses_deepspeed(tmp_path, monkeypatch):
    # DeepSpeed needs an accelerator device, so its state is simulated.
    original = Trainer.create_accelerator_and_postprocess

    def deepspeed(self):
        original(self)
        self.is_deepspeed_enabled = True

    monkeypatch.setattr(Trainer, "create_accelerator_and_postprocess", deepspeed)
    with pytest.raises(ValueError, match=r"DeepSpeed is not supported.*Scaling out"):
        ProjCompTrainer(model=projected(), args=training_args(tmp_path), train_dataset=tiny_data())
