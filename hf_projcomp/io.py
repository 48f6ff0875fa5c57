"""Atomic writes: every writer of hf_projcomp publishes a file or directory only once it is complete.

The rule: a reader of the destination sees the old content or the new, never half of one and never
nothing (where there was something); a write killed at any moment leaves no litter for ever.

* Content is written into a temporary sibling (same filesystem, so the final rename is atomic) named
  ``.{name}.tmp-{pid}-{tag}``: the writer's pid tells a later writer whether it is still running.
* An existing directory is replaced by swapping it with the new one in a single system call
  (``renameat2(RENAME_EXCHANGE)``, Linux), so the destination never goes missing; the old copy, now
  at the temporary's name, is then deleted. Where the swap is unavailable the old directory is renamed
  aside to ``.{name}.old-{pid}-{tag}`` and the new one renamed in.
* Every write first cleans up after writers of the same destination that died (``SIGKILL``, power
  loss): their temporaries are deleted and an ``.old-`` copy stranded between the two renames of the
  fallback is put back where it belongs. Temporaries of live writers (a concurrent save) are left alone.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

# Which kinds of sibling a writer leaves while it runs: its temporary, and (fallback only) the old copy.
_TMP, _OLD = "tmp", "old"
# A pid means something only on the machine that wrote it: on a filesystem shared between hosts
# (multi-node training on NFS) a live writer elsewhere must not be judged dead from here, so the
# random part of a sibling's name starts with a tag of the writer's host.
_HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# renameat2 errors meaning "this kernel/filesystem/sandbox cannot swap", not "this swap is wrong".
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM}
# Boot time in /proc/stat has a 1 s resolution and moves with clock adjustments: a sibling counts as
# older than a process only by more than this, so a live writer's own temporary is never judged stale.
_CLOCK_SLACK_S = 5.0


def looks_like_path(name: str) -> bool:
    """Whether a model argument is meant as a local path rather than a Hub id (``org/name``)."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- names of temporary siblings -----------------------------------------------------------------


def _sibling_name(out: Path, kind: str) -> Path:
    """A fresh name beside ``out`` that says whose it is: ``.{name}.{kind}-{pid}-{host tag}{random}``."""
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}-{_HOST_TAG}{secrets.token_hex(4)}")


def _sibling_pattern(out: Path) -> re.Pattern[str]:
    """Matches the siblings that writers of exactly ``out`` leave (not those of ``out.name + '.x'``)."""
    return re.compile(
        rf"\.{re.escape(out.name)}\.(?P<kind>{_TMP}|{_OLD})-(?P<pid>\d+)-(?P<host>[0-9a-f]{{6}})[0-9a-f]{{8}}"
    )


def _new_sibling(out: Path, create: Callable[[Path], None]) -> Path:
    """Create a temporary sibling of ``out`` with ``create`` (which must fail if the name is taken)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        candidate = _sibling_name(out, _TMP)
        try:
            create(candidate)
            return candidate
        except FileExistsError:  # 32 random bits collided: draw again
            continue


def make_temp_sibling(path: Path) -> Path:
    """A new hidden directory beside ``path``, with the permissions a plain ``mkdir`` would give
    (``os.mkdir`` applies the umask; ``mkdtemp``'s private 0700 would be published as is)."""
    return _new_sibling(Path(path), lambda p: os.mkdir(p, 0o777))


def _make_temp_file(path: Path) -> Path:
    """A new empty hidden file beside ``path``, created as a plain ``open(path, "w")`` would."""
    return _new_sibling(path, lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))


# --- cleaning up after dead writers --------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (signal 0 checks without sending anything)."""
    if pid == os.getpid():
        return True  # another thread of this process may be writing
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OverflowError:
        return False  # not a pid this system can have
    return True


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch, Linux ``/proc``), None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
        )
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, counted after "(comm)"
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _writer_alive(pid: int, sibling: Path, kind: str) -> bool:
    """Whether the writer that made ``sibling`` may still be running: its pid is alive and, for a
    temporary, was not reused since (containers restart their main process under the same small pid),
    i.e. the temporary is not clearly older than the process that has the pid now. (An ``.old-`` copy
    keeps the times of the directory it was, so only its pid can tell.)"""
    if not _pid_alive(pid):
        return False
    started = _process_start(pid)
    if kind != _TMP or started is None:
        return True
    try:
        made = sibling.lstat().st_ctime  # creation or a later change: never earlier than creation
    except FileNotFoundError:
        return True  # gone already: nothing to decide
    return made > started - _CLOCK_SLACK_S


def _remove(path: Path) -> None:
    """Delete a file or directory tree; already gone (a concurrent cleaner) is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale_siblings(out: Path) -> None:
    """Remove what dead writers of ``out`` left beside it, and put back an old copy they stranded.

    A temporary (``.tmp-``) of a dead writer is never needed: it is deleted. An ``.old-`` copy of a
    dead writer is the previous ``out`` moved aside by the fallback publish; if ``out`` is missing the
    writer died between its two renames, so the old copy is restored (the most recent, should there
    be several), otherwise it is deleted. Siblings of live writers, or of other hosts, are kept.
    """
    out = Path(out)
    pattern = _sibling_pattern(out)
    try:
        entries = list(os.scandir(out.parent))
    except FileNotFoundError:
        return
    stale: dict[str, list[Path]] = {_TMP: [], _OLD: []}
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if (
            match
            and match["host"] == _HOST_TAG
            and not _writer_alive(int(match["pid"]), Path(entry.path), match["kind"])
        ):
            stale[match["kind"]].append(Path(entry.path))
    # Restore before deleting anything, so a kill during cleanup cannot lose the only copy.
    if stale[_OLD] and not os.path.lexists(out):
        try:
            newest = max(stale[_OLD], key=lambda p: p.lstat().st_mtime_ns)
            os.rename(newest, out)
            logger.warning("restored %s, stranded by an interrupted write", out)
            stale[_OLD].remove(newest)
        except OSError:  # another process published or restored meanwhile: these copies are stale
            pass
    for path in stale[_TMP] + stale[_OLD]:
        _remove(path)


# --- atomic renames ------------------------------------------------------------------------------


def _load_renameat2() -> Callable[..., int] | None:
    """glibc's ``renameat2`` (2.28+), or None where there is no such call (other OS, old libc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def _exchange(a: Path, b: Path) -> None:
    """Swap ``a`` and ``b`` in one atomic step: no moment where either name is missing.

    Raises:
        OSError: with ``errno`` in ``_NO_EXCHANGE`` where the swap is not supported here, any
            other ``errno`` where it failed for a real reason (the caller should not fall back then).
    """
    if _renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", str(a))
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a), None, str(b))


def _replace_via_aside(tmp: Path, out: Path) -> Path:
    """Publish ``tmp`` at ``out`` with two renames where the swap is unavailable; returns where the
    old ``out`` went. A kill between the renames leaves the old copy at a recognisable ``.old-`` name,
    which the next write's :func:`clean_stale_siblings` puts back."""
    old = _sibling_name(out, _OLD)
    moved = False
    try:
        os.rename(out, old)
        moved = True
        os.rename(tmp, out)
    except BaseException:
        if moved and not os.path.lexists(out):
            os.rename(old, out)  # leave ``out`` as it was
        raise
    return old


# --- keeping the files of an existing directory --------------------------------------------------


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    """A hard link (instant, no space; the same file, so a writer's later appends show in both),
    or a copy where links are refused (some network and FUSE filesystems)."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _carry_other_files(old: Path, new: Path, produced: set[str]) -> None:
    """Give ``new`` the entries of ``old`` it did not produce, so the swap does not drop them."""
    for name in os.listdir(old):
        if name in produced:
            continue
        src, dst = old / name, new / name
        try:
            if src.is_dir() and not src.is_symlink():
                shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(src, dst)
        except FileNotFoundError:  # deleted by its writer meanwhile: nothing to keep
            continue


def _move_late_arrivals(old: Path, new: Path, produced: set[str]) -> None:
    """After the swap, move into ``new`` what ``old`` holds and this write did not produce.

    That covers files another process wrote into the directory after they were carried (a rank of
    a distributed Trainer saving its ``rng_state_1.pth``): ``os.replace`` moves the file itself, so
    a handle its writer still holds stays valid, and replaces the carried copy of a file that was
    rewritten meanwhile. Moving an entry that was hard-linked is a no-op on the same inode.
    """
    for name in os.listdir(old):
        if name in produced:
            continue
        src, dst = old / name, new / name
        try:
            if src.is_dir() and not src.is_symlink() and dst.is_dir() and not dst.is_symlink():
                _exchange(src, dst)  # the original folder in, the carried copy out
            else:
                os.replace(src, dst)
        except FileNotFoundError:
            continue
        except OSError as error:  # no swap here, or its type changed meanwhile: the carried copy stays
            logger.debug("kept the carried copy of %s: %s", dst, error)


# --- the public context managers -----------------------------------------------------------------


def _default_permissions(root: Path) -> None:
    """Files and folders as a plain ``open``/``mkdir`` would create them: writers that go through a
    private temporary file (safetensors weights come out 0600) must not publish unreadable files."""
    mask = _umask()
    for path in root.rglob("*"):
        if not path.is_symlink():  # chmod would follow it to whatever it points at
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _publish(tmp: Path, out: Path, replace: bool, keep_other_files: bool, owned: Collection[str] = ()) -> Path | None:
    """Put the complete directory ``tmp`` at ``out``; returns where the old ``out`` now is (to delete).

    Without ``replace`` it is a plain rename, which fails on a non-empty ``out`` published meanwhile
    by another process (callers such as the demo rely on that).
    """
    if not replace or not out.exists():
        os.replace(tmp, out)
        return None
    produced = set(os.listdir(tmp)) | set(owned)
    if keep_other_files:
        _carry_other_files(out, tmp, produced)
    try:
        _exchange(tmp, out)
        old = tmp
    except OSError as error:
        if error.errno == errno.ENOENT:  # ``out`` was removed meanwhile: nothing to swap with
            os.replace(tmp, out)
            return None
        if error.errno not in _NO_EXCHANGE:
            raise
        old = _replace_via_aside(tmp, out)
    if keep_other_files:
        _move_late_arrivals(old, out, produced)
    return old


@contextmanager
def atomic_directory(
    path: str | os.PathLike, *, overwrite: bool = False, keep_other_files: bool = False, owned: Collection[str] = ()
) -> Iterator[Path]:
    """Yield a temporary directory to write into; publish it at ``path`` when the block succeeds.

    * ``path`` absent: the temporary directory is renamed to it.
    * ``path`` present and ``overwrite``: it is replaced as a whole, atomically (swapped with the new
      directory, then deleted), so a reader finds the old or the new directory, never none.
    * ``path`` present and ``keep_other_files`` (an adapter saved into a Trainer checkpoint that
      already holds ``optimizer.pt``): as ``overwrite``, but the entries of the old directory that the
      block did not write are carried into the new one (hard links where possible), and files that
      another process added to the old directory while this one was publishing are moved in after it;
      except those named in ``owned`` (files this writer may produce, such as a tokenizer's side
      files): an old copy of one would contradict what was just written.
    * otherwise ``FileExistsError``, before anything is written.

    Leftovers of writers of ``path`` that were killed are cleaned up first (:func:`clean_stale_siblings`).
    On any exception (``KeyboardInterrupt`` included) the temporary directory is removed and ``path``
    is left as it was.
    """
    out = Path(path).resolve()
    clean_stale_siblings(out)
    replace = overwrite or keep_other_files
    if out.exists() and not replace:
        raise FileExistsError(f"{out} already exists (pass overwrite=True to replace it)")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    tmp = make_temp_sibling(out)
    old = None
    try:
        yield tmp
        _default_permissions(tmp)
        old = _publish(tmp, out, replace, keep_other_files, owned)
    finally:
        _remove(tmp)  # after a swap this is the old directory
        if old is not None:
            _remove(old)


@contextmanager
def atomic_file(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; rename it to ``path`` when the block succeeds
    (``FileExistsError`` first if ``path`` exists and not ``overwrite``), remove it otherwise.
    Leftovers of killed writers of ``path`` are cleaned up first, as for :func:`atomic_directory`."""
    out = Path(path).resolve()
    clean_stale_siblings(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True to replace it)")
    tmp = _make_temp_file(out)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())  # a writer may have replaced it with a private (0600) file
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["atomic_directory", "atomic_file", "clean_stale_siblings", "looks_like_path", "make_temp_sibling"]
