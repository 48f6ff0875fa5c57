"""FSDP2: the sharded amortised step on 2 CPU processes (torchrun, gloo) equals the 1-process step on the
same global batch, and what it saves loads in one process and merges to the same logits; the same for
ProjCompTrainer asked for FSDP2 through TrainingArguments or accelerate's launcher, with checkpoints that
resume on any number of processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from hf_projcomp import ProjCompConfig, ProjCompTrainer, get_projcomp_model
from hf_projcomp.distributed import shard
from tests.tiny import tiny_model

SCRIPT = Path(__file__).parent / "scripts" / "fsdp_step.py"
TRAIN = Path(__file__).parent / "scripts" / "train_tiny.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    run([sys.executable, str(SCRIPT), str(root / "one")])
    run([*TORCHRUN, str(SCRIPT), str(root / "two")])
    return root


def test_two_sharded_processes_end_where_one_process_ends(runs):
    one, two = (load_file(runs / name / "adapter.safetensors") for name in ("one", "two"))
    assert one.keys() == two.keys()
    initial = get_projcomp_model(
        tiny_model("llama"),
        ProjCompConfig(hidden_size=48, intermediate_size=64, importance="magnitude"),
        progress=False,
    ).state_dict()
    trained = [k for k in one if one[k].is_floating_point()]
    assert max((one[k] - initial[k]).abs().max().item() for k in trained) > 1e-2  # the steps moved P, A, norms
    # Same global batch; the difference is float summation order (gradients reduce-scattered over ranks).
    assert max((one[k] - two[k]).abs().max().item() for k in trained) <= 1e-4
    assert all(torch.equal(one[k], two[k]) for k in one if not one[k].is_floating_point())  # selections
    norms = [(runs / name / "grad_norms.txt").read_text().split() for name in ("one", "two")]
    assert all(abs(float(a) - float(b)) <= 1e-5 * float(a) for a, b in zip(*norms, strict=True))


def test_saved_under_two_processes_loads_and_merges_in_one(runs):
    expected = load_file(runs / "two" / "logits.safetensors")
    model = PeftModel.from_pretrained(tiny_model("llama"), runs / "two" / "adapter")
    merged = model.merge_and_unload()
    with torch.no_grad():
        logits = merged(input_ids=expected["input_ids"]).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-5)


def test_shard_needs_a_process_group():
    model = get_projcomp_model(
        tiny_model("llama"),
        ProjCompConfig(hidden_size=48, intermediate_size=64, importance="magnitude"),
        progress=False,
    )
    with pytest.raises(RuntimeError, match="init_process_group"):
        shard(model)


# -- ProjCompTrainer ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory):
    """4 steps of train_tiny.py (accumulation 2, clipping, checkpoints every 2 steps, no distillation):
    one process; FSDP2 through TrainingArguments under torchrun; FSDP2 through accelerate's launcher;
    then resumed from the sharded checkpoint under 2 processes and under 1 (unsharded)."""
    root = tmp_path_factory.mktemp("fsdp_trainer")
    common = ["--distill", "0", "--steps", "4"]
    run([sys.executable, str(TRAIN), str(root / "one"), *common, "--save-steps", "2"])
    run([*TORCHRUN, str(TRAIN), str(root / "two"), "--fsdp", *common, "--save-steps", "2"])
    run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--use_fsdp",
            "--fsdp_version",
            "2",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(TRAIN),
            str(root / "launcher"),
            *common,
        ]
    )
    checkpoint = str(root / "two" / "checkpoint-2")
    run([*TORCHRUN, str(TRAIN), str(root / "resumed_two"), "--fsdp", *common, "--resume", checkpoint])
    run([sys.executable, str(TRAIN), str(root / "resumed_one"), *common, "--resume", checkpoint])
    return root


def trained(root: Path, name: str, rank: int = 0) -> dict[str, torch.Tensor]:
    return load_file(root / name / f"rank{rank}.safetensors")


def max_float_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if not a[k].is_floating_point())  # selections
    return max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point())


def test_trainer_under_fsdp2_ends_where_one_process_ends(trainer_runs):
    one, two = trained(trainer_runs, "one"), trained(trainer_runs, "two")
    initial = get_projcomp_model(
        tiny_model("llama"),
        ProjCompConfig(hidden_size=48, intermediate_size=64, importance="magnitude"),
        progress=False,
    ).state_dict()
    assert max_float_diff(one, initial) > 1e-4  # training moved P, A and norms
    assert max_float_diff(one, two) <= 1e-5  # float summation order only (measured 1.9e-7)
    assert max_float_diff(two, trained(trainer_runs, "two", rank=1)) == 0.0  # gathered: the same on every rank
    # accelerate launch --use_fsdp --fsdp_version 2 takes the same path as TrainingArguments(fsdp=...).
    assert max_float_diff(two, trained(trainer_runs, "launcher")) <= 1e-6


def test_trainer_fsdp2_checkpoint_is_rank_independent(trainer_runs):
    sharded, single = trainer_runs / "two" / "checkpoint-2", trainer_runs / "one" / "checkpoint-2"
    names = {p.name for p in sharded.iterdir()}
    assert names - {"rng_state_0.pth", "rng_state_1.pth"} == {p.name for p in single.iterdir()} - {"rng_state.pth"}
    # The adapter and the optimizer state are gathered and laid out as an unsharded run writes them.
    assert (
        max_float_diff(
            load_file(sharded / "adapter_model.safetensors"), load_file(single / "adapter_model.safetensors")
        )
        <= 1e-5
    )
    a, b = (torch.load(d / "optimizer.pt", weights_only=True) for d in (sharded, single))
    assert [g["params"] for g in a["param_groups"]] == [g["params"] for g in b["param_groups"]]
    assert a["state"].keys() == b["state"].keys()
    assert (
        max(
            (a["state"][i][k] - b["state"][i][k]).abs().max().item()
            for i in b["state"]
            for k in ("exp_avg", "exp_avg_sq")
        )
        <= 1e-6
    )
    # An ordinary adapter folder: PEFT loads it in one process.
    model = PeftModel.from_pretrained(tiny_model("llama"), sharded)
    saved = load_file(sharded / "adapter_model.safetensors")
    assert max_float_diff({k: v for k, v in model.state_dict().items() if k in saved}, saved) == 0.0


def test_trainer_fsdp2_checkpoint_resumes_on_any_number_of_processes(trainer_runs):
    uninterrupted = trained(trainer_runs, "two")
    assert max_float_diff(trained(trainer_runs, "resumed_two"), uninterrupted) == 0.0
    assert max_float_diff(trained(trainer_runs, "resumed_one"), uninterrupted) <= 1e-5


@pytest.mark.parametrize(
    "version, kwargs, message",
    [
        ("1", {}, "fsdp_version must be 2"),
        ("2", {"distill_alpha": 0.5}, "distill_alpha must be 0 under FSDP2"),
        ("2", {"amortize": False}, "amortize must be True under FSDP2"),
    ],
)
def test_trainer_fsdp_errors_come_before_sharding(tmp_path, monkeypatch, version, kwargs, message):
    from transformers import TrainingArguments

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch --use_fsdp sets
    monkeypatch.setenv("FSDP_VERSION", version)
    model = get_projcomp_model(
        tiny_model("llama"),
        ProjCompConfig(hidden_size=48, intermediate_size=64, importance="magnitude"),
        progress=False,
    )
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match=message):
        ProjCompTrainer(model=model, args=args, **kwargs)
