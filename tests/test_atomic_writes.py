"""``hf_projcomp.io``: a reader sees the old output or the new, never half, never none; a killed write
leaves nothing behind for ever (the next write to the same place cleans up after it).

Writers that must die mid-write run in subprocesses: a ``python -c`` snippet that calls ``os._exit``
inside the block (a crash at a chosen line), and ``tests/scripts/kill_save.py``, which SIGKILLs real
saves (``save_compressed``, ``projcomp compress --overwrite`` and ``PeftModel.save_pretrained`` of an
adapter) at random moments.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_projcomp import io
from hf_projcomp.io import atomic_directory, atomic_file

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def siblings(out: Path) -> list[str]:
    """Hidden entries beside ``out`` that belong to writers of it."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}"))


def make_dir(path: Path, **files: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def crashed_writer(code: str, out: Path) -> None:
    """Run ``code`` (with ``out``, ``io``, ``os`` in scope) in a process that dies in it (``os._exit``)
    and is reaped, so its pid is dead, as after a SIGKILL."""
    prelude = "import os, sys\nfrom pathlib import Path\nfrom hf_projcomp import io\nout = Path(sys.argv[1])\n"
    run = subprocess.run(
        [sys.executable, "-c", prelude + code, str(out)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 17, run.stderr  # it reached its os._exit(17)


def live_writer(out: Path) -> subprocess.Popen:
    """A process that is writing ``out`` (inside ``atomic_directory``) and stays there."""
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom hf_projcomp.io import atomic_directory\n"
        "with atomic_directory(sys.argv[1], overwrite=True) as tmp:\n"
        "    (tmp / 'v').write_text('live')\n    print('ready', flush=True)\n    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_replacing_a_directory_never_leaves_it_missing(tmp_path, monkeypatch):
    """Every filesystem step of an overwrite (each rename and delete) finds the target complete."""
    out = make_dir(tmp_path / "out", v="old", extra="old only")
    seen = []

    def observing(function):
        def wrapper(*args, **kwargs):
            seen.append((function.__name__, (out / "v").read_text() if out.is_dir() else None))
            return function(*args, **kwargs)

        return wrapper

    for module, name in ((os, "replace"), (os, "rename"), (shutil, "rmtree"), (os, "unlink")):
        monkeypatch.setattr(module, name, observing(getattr(module, name)))
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "v").write_text("new")
        fd = os.open(tmp / "weights", os.O_WRONLY | os.O_CREAT, 0o600)  # as safetensors writes it
        os.close(fd)
    monkeypatch.undo()
    assert all(content in ("old", "new") for _, content in seen), seen
    assert sorted(os.listdir(out)) == ["v", "weights"] and (out / "v").read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "weights").stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() makes it
    assert siblings(out) == []


def test_dead_writers_temporaries_are_removed_and_live_ones_kept(tmp_path):
    out = make_dir(tmp_path / "out", v="old")
    crashed_writer(
        "with io.atomic_directory(out, overwrite=True) as tmp:\n    (tmp / 'v').write_text('half')\n    os._exit(17)\n",
        out,
    )
    (dead,) = siblings(out)  # the killed write's temporary, named after its writer
    live = live_writer(out)
    try:
        (live_tmp,) = set(siblings(out)) - {dead}
        with atomic_directory(out, overwrite=True) as tmp:
            (tmp / "v").write_text("new")
        assert siblings(out) == [live_tmp]  # a concurrent writer's temporary is not touched
        assert (out.parent / live_tmp / "v").read_text() == "live"
    finally:
        live.kill()
        live.wait()
    with atomic_directory(out, overwrite=True) as tmp:  # its writer is dead now
        (tmp / "v").write_text("newer")
    assert siblings(out) == [] and (out / "v").read_text() == "newer"


def test_a_reused_pid_does_not_keep_an_older_temporary(tmp_path, monkeypatch):
    """A temporary older than the process that holds its pid now (a container restarted under the
    same pid) is stale."""
    out = make_dir(tmp_path / "out", v="old")
    live = live_writer(out)
    try:
        monkeypatch.setattr(io, "_process_start", lambda pid: time.time() + 60)
        io.clean_stale_siblings(out)
        assert siblings(out) == []
    finally:
        live.kill()
        live.wait()


def test_dead_file_writers_temporaries_are_removed(tmp_path):
    out = tmp_path / "model.gguf"
    out.write_text("old")
    crashed_writer(
        "with io.atomic_file(out, overwrite=True) as tmp:\n    tmp.write_text('half')\n    os._exit(17)\n", out
    )
    assert len(siblings(out)) == 1
    with atomic_file(out, overwrite=True) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new" and siblings(out) == []


def test_an_old_copy_stranded_between_the_fallbacks_renames_is_restored(tmp_path):
    """Without the atomic swap the old directory is renamed aside, then the new one in; a writer
    killed between the two leaves no target, and the next write puts the old copy back first."""
    out = make_dir(tmp_path / "out", v="old")
    crashed_writer(
        "import errno\n"
        "def unsupported(a, b):\n    raise OSError(errno.EINVAL, 'no exchange')\n"
        "io._exchange = unsupported\n"
        "real, calls = os.rename, []\n"
        "def rename(src, dst):\n    calls.append(dst)\n"
        "    if len(calls) == 2:\n        os._exit(17)\n    real(src, dst)\n"
        "os.rename = rename\n"
        "with io.atomic_directory(out, overwrite=True) as tmp:\n    (tmp / 'v').write_text('new')\n",
        out,
    )
    assert not out.exists()
    assert any(".out.old-" in name for name in siblings(out))
    with pytest.raises(FileExistsError), atomic_directory(out):  # restored: there is something to overwrite
        pass
    assert (out / "v").read_text() == "old" and siblings(out) == []
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "v").write_text("new")
    assert (out / "v").read_text() == "new" and siblings(out) == []


def test_fallback_without_the_exchange(tmp_path, monkeypatch):
    """Where ``renameat2`` is refused (EINVAL: a filesystem without RENAME_EXCHANGE) the old copy goes
    aside under a recognisable name, the new one comes in, and nothing is left over."""

    def unsupported(a, b):
        raise OSError(errno.EINVAL, "no exchange")

    monkeypatch.setattr(io, "_exchange", unsupported)
    renamed = []
    real = os.rename
    monkeypatch.setattr(os, "rename", lambda src, dst: (renamed.append(Path(dst).name), real(src, dst)))
    out = make_dir(tmp_path / "out", v="old", **{"optimizer.pt": "state"})
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "v").write_text("new")
    assert renamed[0].startswith(f".out.old-{os.getpid()}-") and renamed[1] == "out"
    assert os.listdir(out) == ["v"] and (out / "v").read_text() == "new" and siblings(out) == []

    with atomic_directory(out, keep_other_files=True) as tmp:  # carrying works without the swap too
        (tmp / "adapter_config.json").write_text("{}")
        (out / "late.pth").write_text("late")  # a concurrent writer, after this write began
    assert sorted(os.listdir(out)) == ["adapter_config.json", "late.pth", "v"] and siblings(out) == []


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A Trainer checkpoint folder: optimizer state, a private scheduler file, a subfolder and an
    adapter that a new save replaces."""
    out = make_dir(
        tmp_path / "checkpoint-10",
        **{
            "optimizer.pt": "optimizer",
            "adapter_config.json": "old",
            "adapter_model.safetensors": "old",
            "special.txt": "old",
        },
    )
    (out / "scheduler.pt").write_text("scheduler")
    (out / "scheduler.pt").chmod(0o600)
    make_dir(out / "global_step10", **{"zero.pt": "zero"})
    return out


def save_adapter(out: Path) -> None:
    with atomic_directory(out, keep_other_files=True) as tmp:
        (tmp / "adapter_config.json").write_text("new")
        (tmp / "adapter_model.safetensors").write_text("new")


def test_keep_other_files_carries_what_the_write_does_not_produce(checkpoint):
    inode = (checkpoint / "optimizer.pt").stat().st_ino
    save_adapter(checkpoint)
    assert sorted(os.listdir(checkpoint)) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "global_step10",
        "optimizer.pt",
        "scheduler.pt",
        "special.txt",
    ]
    assert (
        (checkpoint / "adapter_config.json").read_text()
        == (checkpoint / "adapter_model.safetensors").read_text()
        == "new"
    )
    assert (checkpoint / "optimizer.pt").stat().st_ino == inode  # the same file, not a copy
    assert (checkpoint / "scheduler.pt").stat().st_mode & 0o777 == 0o600  # left as its writer made it
    assert (checkpoint / "global_step10" / "zero.pt").read_text() == "zero"
    assert siblings(checkpoint) == []


def test_keep_other_files_moves_in_what_arrives_during_the_publish(checkpoint, monkeypatch):
    """Another rank writes into the old folder after its files were carried: a new file (still open),
    a rewritten file (replaced by rename) and a folder all end up in the published folder."""
    real, handles = io._exchange, []

    def concurrent_writer_then_exchange(a, b):
        if Path(b) == checkpoint:
            handles.append(open(checkpoint / "rng_state_1.pth", "w"))
            handles[0].write("begun ")
            handles[0].flush()
            (checkpoint / "optimizer.tmp").write_text("optimizer, step 11")
            os.replace(checkpoint / "optimizer.tmp", checkpoint / "optimizer.pt")
            make_dir(checkpoint / "late_folder", f="late")
        real(a, b)

    monkeypatch.setattr(io, "_exchange", concurrent_writer_then_exchange)
    save_adapter(checkpoint)
    handles[0].write("and finished")  # the writer's handle still points at the published file
    handles[0].close()
    assert (checkpoint / "rng_state_1.pth").read_text() == "begun and finished"
    assert (checkpoint / "optimizer.pt").read_text() == "optimizer, step 11"
    assert (checkpoint / "late_folder" / "f").read_text() == "late"
    assert (checkpoint / "adapter_config.json").read_text() == "new" and siblings(checkpoint) == []


@pytest.mark.parametrize("where", ["block", "publish"])
def test_an_interrupted_write_leaves_the_target_as_it_was(checkpoint, monkeypatch, where):
    """KeyboardInterrupt in the block or in the publish (files already carried): the target, carried
    files included, is untouched and no temporary is left."""

    def interrupted(a, b):
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "_exchange", interrupted)
    before = {p.relative_to(checkpoint): p.read_text() for p in checkpoint.rglob("*") if p.is_file()}
    with pytest.raises(KeyboardInterrupt), atomic_directory(checkpoint, keep_other_files=True) as tmp:
        (tmp / "adapter_config.json").write_text("new")
        if where == "block":
            raise KeyboardInterrupt
    assert {p.relative_to(checkpoint): p.read_text() for p in checkpoint.rglob("*") if p.is_file()} == before
    assert siblings(checkpoint) == []


# --- SIGKILL at random moments of real saves ------------------------------------------------------

KILLS = 20


class KillSave:
    """``tests/scripts/kill_save.py``: saves in forked children that it SIGKILLs on request."""

    def __init__(self, mode: str, work: Path):
        self.stderr = (work / "stderr.txt").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/scripts/kill_save.py"), mode, str(work)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=ENV,
            cwd=ROOT,
        )
        self.work = work
        self.info = self._answer()

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, (self.work / "stderr.txt").read_text()[-3000:]
        return json.loads(line)

    def save(self, name: str, kill_after: float, anchor: str = "s") -> dict:
        """Save model ``name``, killed ``kill_after`` s after the save ("s") or its publishing ("p") began."""
        self.proc.stdin.write(f"{name} {kill_after} {anchor}\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.stderr.close()


def weights(directory: str | Path, mode: str = "save") -> dict[str, torch.Tensor]:
    """The saved tensors; for an adapter, with its config's ``training_tokens`` (which tells the two
    saved states apart too, so a config beside the other state's weights shows)."""
    directory = Path(directory)
    if mode != "adapter":
        AutoTokenizer.from_pretrained(directory)
        return AutoModelForCausalLM.from_pretrained(directory).state_dict()
    tokens = json.loads((directory / "adapter_config.json").read_text())["training_tokens"]
    return {**load_file(directory / "adapter_model.safetensors"), "training_tokens": torch.tensor(tokens)}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mode", ["save", "cli", "adapter"])
def test_sigkill_during_a_save_over_an_existing_output(tmp_path, mode, one_thread):
    """``save_compressed(overwrite=True)`` of a ~150 MB checkpoint, ``projcomp compress --overwrite`` of a
    tiny model and ``PeftModel.save_pretrained`` of a ~100 MB adapter into a folder holding another file,
    killed at seeded random moments over one save's duration: after each kill the output loads and is
    exactly the old or the new model (the other file kept); the next complete save leaves no litter."""
    runner = KillSave(mode, tmp_path)
    try:
        target, publish, end = Path(runner.info["target"]), runner.info["publish"], runner.info["end"]
        refs = {name: weights(path, mode) for name, path in runner.info["refs"].items()}
        own = target / "trainer_state.json"  # a checkpoint's own file beside the adapter
        if mode == "adapter":
            own.write_text("{}")
        rng = random.Random(0)
        current, outcomes, trials = "A", {"old": 0, "new": 0}, 0
        while sum(outcomes.values()) < KILLS and trials < 3 * KILLS:
            new = "B" if current == "A" else "A"
            # Half the kills spread over the whole save (one in each of KILLS / 2 equal slices), half
            # over its publishing, which is over in milliseconds (the swap, then deleting the old
            # copy): the latter often come too late, as the save has ended.
            if trials % 2:
                result = runner.save(new, rng.uniform(0, (end - publish) / 8), "p")
            else:
                slices = KILLS // 2
                result = runner.save(new, end * (trials // 2 % slices + rng.random()) / slices)
            trials += 1
            assert not result["hung"], f"trial {trials}: the save stopped making progress and was killed"
            assert target.is_dir(), f"no output after a kill at trial {trials}: {siblings(target)}"
            assert mode != "adapter" or own.is_file(), "a file the save does not write was dropped"
            loaded = weights(target, mode)
            (found,) = [name for name in (current, new) if same(loaded, refs[name])] or [None]
            assert found is not None, f"trial {trials}: the output is neither the old nor the new model"
            if result["killed"]:
                outcomes["old" if found == current else "new"] += 1
            else:
                assert result["status"] == 0 and found == new
            current = found
        assert sum(outcomes.values()) >= KILLS, outcomes
        final = "B" if current == "A" else "A"
        assert runner.save(final, -1)["status"] == 0
        assert same(weights(target, mode), refs[final])
        if mode == "adapter":
            PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), target)
        assert siblings(target) == [], "a killed save left litter that the next save did not clean"
        print(f"{mode}: {trials} saves of {end:.2f} s (publishing from {publish:.3f} s), kills left the {outcomes}")
    finally:
        runner.close()
