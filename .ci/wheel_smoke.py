"""Smoke test of an installed (non-editable) hf_projcomp wheel, run by .ci/run outside the checkout.

A tiny Qwen2 with a byte-level BPE tokenizer is written as a local model directory; then the
installed ``projcomp compress``, ``projcomp export`` (GGUF) and ``projcomp eval`` run on it, and ``save_merged``
writes a
projected model. Each writes a model card, so a template missing from the wheel fails here. Then, in
a fresh process, PEFT alone (``AutoPeftModelForCausalLM``) reloads the saved adapter: registration
with PEFT works from the installed package.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

import hf_projcomp
from hf_projcomp import ProjCompConfig, get_projcomp_model

TEXT = (
    "The European lobster is a species of clawed lobster from the eastern Atlantic Ocean. "
    "Lobsters may grow to a length of sixty centimetres and a mass of six kilograms. "
) * 40


def tiny_model_dir(root: Path) -> Path:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        [TEXT],
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    config = AutoConfig.for_model(
        "qwen2",
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    path = root / "tiny-base"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "text.txt").write_text(TEXT, encoding="utf-8")
    return path


def projcomp(*args: object) -> str:
    run = subprocess.run(["projcomp", *map(str, args)], capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"projcomp {args[0]} failed:\n{run.stderr[-3000:]}")
    return run.stdout


def main() -> None:
    source = Path(hf_projcomp.__file__).resolve()
    if "site-packages" not in source.parts:
        sys.exit(f"hf_projcomp was imported from {source}, not from the installed wheel")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = tiny_model_dir(root)
        projcomp(
            "compress",
            "--model",
            base,
            "--calibration",
            base / "text.txt",
            "--target-params",
            "0.8",
            "--num-sequences",
            "2",
            "--sequence-length",
            "64",
            "--output",
            root / "compressed",
        )
        assert "hf_projcomp" in (root / "compressed" / "README.md").read_text(encoding="utf-8")
        projcomp("export", root / "compressed", "--gguf", root / "compressed.gguf", "--outtype", "q8_0")
        assert (root / "compressed.gguf").stat().st_size > 0
        report = json.loads(
            projcomp(
                "eval", root / "compressed", "--base", base, "--text", base / "text.txt", "--chars", "2000", "--json"
            )
        )
        assert report["parameters"] < report["base_parameters"], report
        model = AutoModelForCausalLM.from_pretrained(base)
        pc = get_projcomp_model(model, ProjCompConfig(hidden_size=32, intermediate_size=64), progress=False)
        merged = pc.save_merged(root / "merged", AutoTokenizer.from_pretrained(base))
        assert (merged / "README.md").is_file() and (merged / "model.safetensors").is_file()
        pc.save_pretrained(root / "adapter")
        reload = (
            "import hf_projcomp, sys, torch; from peft import AutoPeftModelForCausalLM; "
            "from transformers import AutoModelForCausalLM; "
            "pc = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]); "
            "ids = torch.tensor([[5, 6, 7]]); "
            "assert torch.equal(pc.merge_and_unload()(ids).logits, "
            "AutoModelForCausalLM.from_pretrained(sys.argv[2])(ids).logits)"
        )
        subprocess.run([sys.executable, "-c", reload, str(root / "adapter"), str(merged)], check=True)
    print(f"wheel smoke test passed ({source.parent})")


if __name__ == "__main__":
    main()
