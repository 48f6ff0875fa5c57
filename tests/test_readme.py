"""Every Python block of README.md runs, in order, in one fresh process, as a newcomer would paste them.

The demo Gemma-3-270M is replaced by a tiny Gemma-3 saved to a local directory (``load_model`` is
patched to load it), the widths and step counts by tiny ones (``SUBSTITUTIONS``: each must still occur
in the README, so a rewritten snippet cannot silently skip it), and the Hub by the recording stand-in of
``tests/fake_hub.py``. Anything else a block needs that is not defined in an earlier block fails here,
and so does a Hub lookup (the tiny base carries the demo's marker, so adapters record its Hub id).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"
# (what the README says, what runs here): the demo's widths and budgets, scaled to the tiny model.
SUBSTITUTIONS = [
    ("hidden_size=512, intermediate_size=1024", "hidden_size=48, intermediate_size=64"),
    ("max_steps=100", "max_steps=2"),
    # The tiny model is mostly embedding: half of it leaves no room for the tokens a tokenizer needs.
    ("target_params=0.5)", "target_params=0.8)"),
    ("target_params=0.4)", "target_params=0.8)"),
]
PRELUDE = """
import json, sys
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
import hf_projcomp, hf_projcomp.loading
from tests.fake_hub import install
from tests.tiny import tiny_config
from tests.tiny_tokenizers import tiny_tokenizer

install("hub.log")
tok = tiny_tokenizer("byte_fallback")
special = {k: tok.convert_tokens_to_ids(getattr(tok, k[:-3])) for k in ("bos_token_id", "eos_token_id")}
config = tiny_config("gemma3_text", vocab_size=len(tok), max_position_embeddings=1024, pad_token_id=None, **special)
AutoModelForCausalLM.from_config(config).save_pretrained("tiny-base")
tok.save_pretrained("tiny-base")
Path("tiny-base/hf_projcomp_demo.json").write_text("{}")  # recorded as google/gemma-3-270m, as the demo is


def load_model(name=None, **kwargs):  # the demo, as a tiny local checkpoint
    return AutoModelForCausalLM.from_pretrained("tiny-base").eval(), AutoTokenizer.from_pretrained("tiny-base")


hf_projcomp.load_model = hf_projcomp.loading.load_model = load_model
"""


def readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_substitutions_still_match_the_readme():
    text = "".join(readme_blocks())
    for old, _ in SUBSTITUTIONS:
        assert old in text, f"README no longer says {old!r}: update SUBSTITUTIONS in {__file__}"


def test_every_python_block_of_the_readme_runs_in_order(tmp_path):
    blocks = readme_blocks()
    assert len(blocks) >= 5
    script = PRELUDE
    for i, block in enumerate(blocks):
        for old, new in SUBSTITUTIONS:
            block = block.replace(old, new)
        script += f"\nprint('--- README block {i}', flush=True)\n{block}"
    (tmp_path / "readme_blocks.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": str(README.parent), "HF_TOKEN": "hf_x", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "readme_blocks.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    assert f"--- README block {len(blocks) - 1}" in run.stdout
    # Adapters record the demo's Hub id; nothing looks it up (there is no network here).
    for lookup in ("Unable to fetch remote file", "Could not find a config file", "Name or service not known"):
        assert lookup not in run.stderr
    for folder in ("adapter", "small", "merged", "checkpoint", "compact"):
        assert (tmp_path / folder / "config.json").is_file() or (tmp_path / folder / "adapter_config.json").is_file()
    pushed = [json.loads(line) for line in (tmp_path / "hub.log").read_text().splitlines()]
    assert [p["call"] for p in pushed] == ["create_repo", "create_commit"]
    assert "model.safetensors" in pushed[1]["files"]
