"""FSDP2: the sharded amortised step on 2 CPU processes (torchrun, gloo) equals the 1-process step on the
same global batch, and what it saves loads in one process and merges to the same logits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from hf_projcomp import ProjCompConfig, get_projcomp_model
from hf_projcomp.distributed import shard

from tests.tiny import tiny_model

SCRIPT = Path(__file__).parent / "scripts" / "fsdp_step.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    one = subprocess.run([sys.executable, str(SCRIPT), str(root / "one")], capture_output=True, text=True,
                         timeout=600, env=ENV)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(SCRIPT),
                          str(root / "two")], capture_output=True, text=True, timeout=600, env=ENV)
    assert two.returncode == 0, two.stderr[-3000:]
    return root


def test_two_sharded_processes_end_where_one_process_ends(runs):
    one, two = (load_file(runs / name / "adapter.safetensors") for name in ("one", "two"))
    assert one.keys() == two.keys()
    initial = get_projcomp_model(tiny_model("llama"), ProjCompConfig(hidden_size=48, intermediate_size=64, importance="magnitude"),
                                 progress=False).state_dict()
    trained = [k for k in one if one[k].is_floating_point()]
    assert max((one[k] - initial[k]).abs().max().item() for k in trained) > 1e-2  # the steps moved P, A, norms
    # Same global batch; the difference is float summation order (gradients reduce-scattered over ranks).
    assert max((one[k] - two[k]).abs().max().item() for k in trained) <= 1e-4
    assert all(torch.equal(one[k], two[k]) for k in one if not one[k].is_floating_point())  # selections
    norms = [(runs / name / "grad_norms.txt").read_text().split() for name in ("one", "two")]
    assert all(abs(float(a) - float(b)) <= 1e-5 * float(a) for a, b in zip(*norms))


def test_saved_under_two_processes_loads_and_merges_in_one(runs):
    expected = load_file(runs / "two" / "logits.safetensors")
    model = PeftModel.from_pretrained(tiny_model("llama"), runs / "two" / "adapter")
    merged = model.merge_and_unload()
    with torch.no_grad():
        logits = merged(input_ids=expected["input_ids"]).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-5)


def test_shard_needs_a_process_group():
    model = get_projcomp_model(tiny_model("llama"), ProjCompConfig(hidden_size=48, intermediate_size=64, importance="magnitude"),
                               progress=False)
    with pytest.raises(RuntimeError, match="init_process_group"):
        shard(model)
