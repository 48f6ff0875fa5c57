"""Writes tests/data/adapter_0.2 with hf_projcomp 0.2.0 (run from a checkout of commit 4c5f45a:
``PYTHONPATH=. python tests/data/adapter_0.2/make.py OUT``): the adapter, and the logits it gave."""
import sys

import torch
from safetensors.torch import save_file

from hf_projcomp import ProjCompConfig, get_projcomp_model
from hf_projcomp.projection import unwrap
from tests.test_compact import model_for
from tests.tiny_tokenizers import TRAIN, tiny_tokenizer

tokenizer = tiny_tokenizer("byte_fallback")
config = ProjCompConfig(hidden_size=32, intermediate_size=32, vocab_size=320, importance="compact")
pc = get_projcomp_model(model_for("gemma3_text", tokenizer), config, calibration_data=TRAIN * 4, tokenizer=tokenizer,
                        progress=False)
gen = torch.Generator().manual_seed(0)
with torch.no_grad():  # as if trained: every tensor differs from its initial value
    for p in unwrap(pc).trainable_parameters():
        p.add_(torch.randn(p.shape, generator=gen) * 0.01)
pc.save_pretrained(sys.argv[1])
ids = unwrap(pc).tokenizer(TRAIN[0], return_tensors="pt").input_ids[:, :16]
with torch.no_grad():
    save_file({"input_ids": ids, "logits": pc(input_ids=ids).logits}, f"{sys.argv[1]}/expected_logits.safetensors")
