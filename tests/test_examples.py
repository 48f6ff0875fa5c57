"""The example Trainer script, end to end on a tiny local model directory (the Hub loading path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("importance", ["activation", "compact"])
def test_train_script_writes_a_vanilla_merged_model(tiny_base_dir, tmp_path, importance):
    base_dir = tiny_base_dir
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "train_projected_compression.py"),
        "--model_name_or_path",
        str(base_dir),
        "--train_file",
        str(base_dir / "train.txt"),
        "--importance",
        importance,
        "--hidden_size",
        "48",
        "--intermediate_size",
        "64",
        "--block_size",
        "32",
        "--calibration_sequences",
        "4",
        "--distill_alpha",
        "0.5",
        "--output_dir",
        str(out),
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "2",
        "--save_steps",
        "2",
        "--report_to",
        "none",
        "--use_cpu",
        "--eval_text_file",
        str(base_dir / "train.txt"),
        "--eval_chars",
        "2000",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "merged vanilla Qwen2ForCausalLM written to" in run.stdout
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert "projected-compression" in (out / "merged" / "README.md").read_text()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    assert (merged.config.hidden_size, merged.config.intermediate_size) == (48, 64)
    assert merged.config.vocab_size == len(tokenizer)


def test_train_script_under_accelerate_fsdp2(tiny_base_dir, tmp_path):
    """The user's path to FSDP2: the same script under accelerate's launcher with fsdp_version 2, on 2 CPU
    processes; the checkpoint is gathered (one adapter for all ranks) and the merged model is vanilla."""
    out = tmp_path / "out"
    cmd = [
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
        str(ROOT / "examples" / "train_projected_compression.py"),
        "--model_name_or_path",
        str(tiny_base_dir),
        "--train_file",
        str(tiny_base_dir / "train.txt"),
        "--hidden_size",
        "48",
        "--intermediate_size",
        "64",
        "--block_size",
        "32",
        "--calibration_sequences",
        "4",
        "--output_dir",
        str(out),
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "1",
        "--gradient_accumulation_steps",
        "2",
        "--save_steps",
        "2",
        "--report_to",
        "none",
        "--use_cpu",
    ]
    run = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("merged vanilla Qwen2ForCausalLM written to") == 1  # the main process writes
    assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt"} <= {p.name for p in (out / "checkpoint-2").iterdir()}
    from peft import PeftModel

    import hf_projcomp  # noqa: F401  (registers the method with PEFT)

    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_dir), out)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert (merged.config.hidden_size, merged.config.intermediate_size) == (48, 64)
    ids = AutoTokenizer.from_pretrained(out / "merged")("The lobster", return_tensors="pt").input_ids
    torch.testing.assert_close(adapter.merge_and_unload()(ids).logits, merged(ids).logits, rtol=0, atol=1e-5)


def test_trl_sft_example_trains_saves_and_merges(tiny_base_dir, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "sft_with_trl.py"),
        "--model_name_or_path",
        str(tiny_base_dir),
        "--train_file",
        str(tiny_base_dir / "train.txt"),
        "--hidden_size",
        "48",
        "--intermediate_size",
        "64",
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "2",
        "--max_length",
        "32",
        "--use_cpu",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    from peft import PeftModel

    import hf_projcomp  # noqa: F401  (registers the method with PEFT)

    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_dir), out)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert (merged.config.hidden_size, merged.config.intermediate_size) == (48, 64)
    ids = AutoTokenizer.from_pretrained(out / "merged")("The lobster", return_tensors="pt").input_ids
    assert torch.equal(adapter.merge_and_unload()(ids).logits, merged(ids).logits)


def test_fsdp2_example_trains_on_two_processes_and_saves_an_ordinary_adapter(tiny_base_dir, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        str(ROOT / "examples" / "train_fsdp2.py"),
        "--model",
        str(tiny_base_dir),
        "--train_file",
        str(tiny_base_dir / "train.txt"),
        "--hidden_size",
        "48",
        "--intermediate_size",
        "64",
        "--steps",
        "2",
        "--batch_size",
        "2",
        "--accumulation",
        "2",
        "--block_size",
        "32",
        "--output_dir",
        str(out),
    ]
    run = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "step 2/2 grad_norm" in run.stdout and f"adapter written to {out}" in run.stdout
    from peft import PeftModel

    import hf_projcomp  # noqa: F401  (registers the method with PEFT)

    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_dir), out).merge_and_unload()
    assert (merged.config.hidden_size, merged.config.intermediate_size) == (48, 64)
