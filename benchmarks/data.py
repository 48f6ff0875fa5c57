"""Where the benchmarks find their real text (WikiText-2 is not part of this repository: see benchmarks/README.md).

``$HF_PROJCOMP_DATA`` or, by default, ``../shared/data`` beside the repository, holding
``wikitext-2/valid.txt`` (WikiText-2 validation split, tokenized release) and
``wikitext-2-raw/wiki.test.raw`` (WikiText-2 raw test split). The out-of-domain dev text ships in
``benchmarks/data/`` (its README states source and licence).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OOD_DEV = Path(__file__).resolve().parent / "data" / "ood_dev_python.txt"
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


def dev_text(chars: int | None = None) -> str:
    """In-domain dev text: the part of WikiText-2 validation after the bundled calibration text (which
    never contains it), its first ``chars`` characters."""
    from hf_projcomp.evaluate import load_text
    from hf_projcomp.texts import CALIBRATION, bundled_text

    valid = load_text(data_file(VALID))
    calibration = bundled_text(CALIBRATION)
    if not valid.startswith(calibration):
        raise SystemExit("the bundled calibration text is not a prefix of wikitext-2/valid.txt")
    return valid[len(calibration) :][:chars]


def ood_dev_text() -> str:
    """Out-of-domain dev text: Python source (CPython's argparse.py, first 29,964 characters)."""
    return OOD_DEV.read_text(encoding="utf-8")
