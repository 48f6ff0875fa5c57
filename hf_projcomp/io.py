"""Atomic directory writes: every writer of hf_projcomp publishes a directory only once it is complete.

Files go into a temporary sibling directory (same filesystem, so the final rename is atomic); an
interrupted or failed write leaves at most a hidden ``.name-*`` directory, never something at the
destination that looks complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path


def looks_like_path(name: str) -> bool:
    """Whether a model argument is meant as a local path rather than a Hub id (``org/name``)."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temp_sibling(path: Path) -> Path:
    """A new hidden directory beside ``path``, with the permissions a plain ``mkdir`` would give
    (``mkdtemp`` makes it private, 0700, which would then be published as is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp


@contextmanager
def atomic_directory(
    path: str | os.PathLike, *, overwrite: bool = False, merge: bool = False, owned: Collection[str] = ()
) -> Iterator[Path]:
    """Yield a temporary directory to write into; publish it at ``path`` when the block succeeds.

    * ``path`` absent: the temporary directory is renamed to it.
    * ``path`` present and ``overwrite``: it is replaced as a whole (the old one is moved aside first
      and deleted once the new one is in place).
    * ``path`` present and ``merge`` (a Trainer checkpoint that already holds optimizer state): the new
      files move in one by one, each replacing its namesake, in the order of their names except that
      files named ``*config.json`` are removed first and move in last, so a reader never finds a
      config beside weights it does not describe. Files of the old directory that the new write does
      not produce stay, except those named in ``owned`` (files this writer may produce, such as a
      tokenizer's side files): an old copy of one would contradict what was just written.
    * otherwise ``FileExistsError``, before anything is written.

    On any exception (``KeyboardInterrupt`` included) the temporary directory is removed and ``path``
    is left as it was.
    """
    out = Path(path).resolve()
    if out.exists() and not (overwrite or merge):
        raise FileExistsError(f"{out} already exists (pass overwrite=True to replace it)")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    tmp = make_temp_sibling(out)
    try:
        yield tmp
        _default_permissions(tmp)
        _publish(tmp, out, merge=merge, owned=owned)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; rename it to ``path`` when the block succeeds
    (``FileExistsError`` first if ``path`` exists and not ``overwrite``), remove it otherwise."""
    out = Path(path).resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())  # mkstemp's file is private (0600)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _default_permissions(root: Path) -> None:
    """Files and folders as a plain ``open``/``mkdir`` would create them: writers that go through a
    private temporary file (safetensors weights come out 0600) must not publish unreadable files."""
    mask = _umask()
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _publish(tmp: Path, out: Path, merge: bool, owned: Collection[str]) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    if merge:
        names = sorted(os.listdir(tmp), key=lambda n: (n.endswith("config.json"), n))
        for name in names:  # configs that will be replaced go first, so none outlives its weights
            if name.endswith("config.json") and (out / name).is_file():
                (out / name).unlink()
        for name in set(owned) - set(names):
            if (out / name).is_file():
                (out / name).unlink()
        for name in names:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(tmp / name, target)
        return
    old = make_temp_sibling(out)
    try:
        os.replace(out, old / out.name)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["atomic_directory", "atomic_file", "looks_like_path", "make_temp_sibling"]
