"""DDP on 2 CPU processes (torchrun, gloo): every rank ends with the adapter one process trains on the
same global batch, whichever Trainer and ``ddp_find_unused_parameters``; a plain Trainer with gradient
checkpointing, which would train a different adapter on each rank, is refused with the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hf_projcomp import ProjCompConfig, get_projcomp_model
from tests.tiny import tiny_model

TRAIN = Path(__file__).parent / "scripts" / "train_tiny.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
CASES = {
    "ProjCompTrainer, find_unused_parameters=False": ["--find-unused", "false"],
    "ProjCompTrainer, checkpointing, find_unused_parameters=False": ["--find-unused", "false", "--checkpointing"],
    "plain Trainer, find_unused_parameters=False": ["--trainer", "plain", "--find-unused", "false"],
}


def train(out: Path, flags: list[str], processes: int) -> subprocess.CompletedProcess:
    cmd = [*(TORCHRUN if processes == 2 else [sys.executable]), str(TRAIN), str(out), *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)


@pytest.mark.parametrize("case", CASES)
def test_ranks_end_with_the_one_process_adapter(case, tmp_path):
    for processes in (1, 2):
        done = train(tmp_path / str(processes), CASES[case], processes)
        assert done.returncode == 0, done.stderr[-3000:]
    one = load_file(tmp_path / "1" / "rank0.safetensors")
    ranks = [load_file(tmp_path / "2" / f"rank{r}.safetensors") for r in (0, 1)]
    assert one.keys() == ranks[0].keys() == ranks[1].keys()
    initial = get_projcomp_model(
        tiny_model("llama"),
        ProjCompConfig(hidden_size=48, intermediate_size=64, importance="magnitude"),
        progress=False,
    ).state_dict()
    assert max((one[k] - initial[k]).abs().max().item() for k in one if one[k].is_floating_point()) > 1e-3  # trained
    for name, tensor in one.items():
        assert (ranks[0][name] == ranks[1][name]).all(), name  # DDP keeps the ranks identical
        assert (ranks[0][name].double() - tensor.double()).abs().max() <= 1e-5, name


def test_plain_trainer_with_checkpointing_under_ddp_is_refused_with_the_fix(tmp_path):
    done = train(tmp_path, ["--trainer", "plain", "--checkpointing"], processes=2)
    assert done.returncode != 0
    assert "ranks would train different adapters" in done.stderr and "ProjCompTrainerMixin" in done.stderr
