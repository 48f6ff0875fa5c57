"""Where the benchmarks find their real text (not part of this repository: see benchmarks/README.md).

``$HF_PROJCOMP_DATA`` or, by default, ``../shared/data`` beside the repository, holding
``wikitext-2/valid.txt`` (WikiText-2 validation split, tokenized release) and
``wikitext-2-raw/wiki.test.raw`` (WikiText-2 raw test split).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HF_PROJCOMP_DATA") or ROOT.parent / "shared" / "data")
VALID = "wikitext-2/valid.txt"
TEST = "wikitext-2-raw/wiki.test.raw"
_SOURCES = {
    VALID: "the WikiText-2 validation split, tokenized release (datasets: wikitext, 'wikitext-2-v1', split "
           "'validation', lines joined)",
    TEST: "the WikiText-2 raw test split (datasets: wikitext, 'wikitext-2-raw-v1', split 'test', lines joined)",
}


def data_file(name: str) -> Path:
    """The benchmark input ``name`` (VALID or TEST); exits with a message saying how to get it if absent."""
    path = DATA / name
    if not path.is_file():
        raise SystemExit(
            f"{Path(__file__).parent.name}: {path} not found. It is {_SOURCES.get(name, name)}; put it there, "
            f"or point HF_PROJCOMP_DATA at a folder holding {VALID} and {TEST}. The test suite does not need it."
        )
    return path
