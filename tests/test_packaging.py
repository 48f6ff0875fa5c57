"""What users install and clone is complete: the wheel carries its data, the tests need nothing outside
the repository."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_model_card_templates(tmp_path):
    """A non-editable install must find model_cards/*.md inside the package (``.ci/run`` also installs
    the wheel in a fresh virtualenv and compresses, evaluates and merges with it)."""
    source = tmp_path / "source"  # built from a copy: a build leaves build/ and *.egg-info behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "hf_projcomp", "model_cards"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(
            ROOT / name,
            source / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (wheel,) = tmp_path.glob("hf_projcomp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {f"hf_projcomp/model_cards/{p.name}" for p in (ROOT / "model_cards").glob("*.md")}
    assert templates and templates <= names
    texts = {f"hf_projcomp/data/{p.name}" for p in (ROOT / "hf_projcomp" / "data").iterdir()}
    assert len(texts) == 3 and texts <= names
    assert not any(name.startswith(("tests/", "benchmarks/")) for name in names)
    modules = {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "hf_projcomp").rglob("*.py") if "__pycache__" not in p.parts
    }
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"


def test_the_tests_read_nothing_outside_the_repository():
    """Contributors clone this repository alone: no test may read ../shared (benchmarks may, and say so)."""
    pattern = re.compile(r"""["']shared["']|\.\./shared|parents\[\d\]\.parent""")
    offenders = [
        p.name
        for p in (ROOT / "tests").rglob("*.py")
        if p.name != Path(__file__).name and pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []
    assert (ROOT / "hf_projcomp" / "data" / "README.md").is_file()
