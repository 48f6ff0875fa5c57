"""Real text shipped with the package, so the default jobs run offline with nothing of the user's.

``hf_projcomp/data/`` holds two excerpts of WikiText-2 (CC BY-SA 3.0, see the README there):

* :data:`CALIBRATION`: the first 47 articles of the validation split (tokenized release), the
  default calibration text of ``projcomp compress``; the rest of the split is the dev text the
  benchmarks choose defaults on, so the default never calibrates on it.
* :data:`TEST_HEAD`: the first 20,000 characters of the raw test split, the default text of
  ``projcomp eval`` (the base's score on it: ``docs/decisions.md#reference-figures``). Test text:
  report on it, never choose anything by it. Its old name ``EVALUATION`` is a deprecated alias.
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path

CALIBRATION = "wikitext2_calibration.txt"
TEST_HEAD = "wikitext2_test_head.txt"
DESCRIPTIONS = {
    CALIBRATION: "WikiText-2 validation, first 47 articles (895,837 bytes, bundled with hf_projcomp)",
    TEST_HEAD: "the first 20,000 characters of WikiText-2 test (bundled with hf_projcomp)",
}


def bundled_text(name: str, *, path: bool = False) -> str | Path:
    """The bundled text ``name`` (:data:`CALIBRATION` or :data:`TEST_HEAD`), or its path with ``path=True``."""
    if name not in DESCRIPTIONS:
        raise ValueError(f"name must be one of {tuple(DESCRIPTIONS)}, got {name!r}")
    file = Path(str(resources.files("hf_projcomp") / "data" / name))
    return file if path else file.read_text(encoding="utf-8")


def __getattr__(name: str) -> str:
    if name == "EVALUATION":  # renamed: it is WikiText-2 *test* text
        warnings.warn("hf_projcomp.texts.EVALUATION is deprecated: use TEST_HEAD", FutureWarning, stacklevel=2)
        return TEST_HEAD
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CALIBRATION", "DESCRIPTIONS", "TEST_HEAD", "bundled_text"]
