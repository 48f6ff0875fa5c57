"""Writes tests/data/legacy_adapter_0.1 with hf_projcomp 0.1.0 (run from a checkout of commit 7888e01)."""
import sys, torch
from hf_projcomp import ProjCompConfig, get_projcomp_model
from tests.test_compact import model_for
from tests.tiny_tokenizers import TRAIN, tiny_tokenizer

tokenizer = tiny_tokenizer("byte_fallback")
config = ProjCompConfig(hidden_size=32, intermediate_size=32, vocab_size=320, importance="compact")
pc = get_projcomp_model(model_for("gemma3_text", tokenizer), config, calibration_data=TRAIN * 4, tokenizer=tokenizer, progress=False)
gen = torch.Generator().manual_seed(0)
with torch.no_grad():  # as if trained: every tensor differs from its initial value
    for p in pc.trainable_parameters():
        p.add_(torch.randn(p.shape, generator=gen) * 0.01)
pc.save_pretrained(sys.argv[1])
