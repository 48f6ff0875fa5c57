"""Save a checkpoint over an existing one and SIGKILL the save at a chosen moment (run by tests).

    python tests/scripts/kill_save.py {save,cli,adapter} WORKDIR

Importing torch and transformers takes seconds, more than a save, so this process imports them once
and forks a child for every save; the child is what gets killed. ``save`` writes with
``save_compressed`` (a tiny Llama widened to ~150 MB of weights); ``cli`` runs ``projcomp compress
--output WORKDIR/out --overwrite`` in-process (``hf_projcomp.cli.main``), on a tiny local model;
``adapter`` writes a ~100 MB projected-compression adapter with ``PeftModel.save_pretrained`` into a
folder that also holds a file of its own (as a Trainer checkpoint holds ``trainer_state.json``).
Two models alternate, "A" and "B", with references saved once to ``WORKDIR/ref-A`` and ``ref-B``.

Protocol, one JSON object per line. On start it prints ``{"publish": when a save over an existing
output begins publishing, "end": when it returns (seconds from its start, median of 4),
"target": ..., "refs": {...}}``; then for each input line ``A|B DELAY s|p`` it saves that model over
the target and, if DELAY >= 0, kills the save DELAY seconds after ``save_compressed`` began ("s")
or after it began publishing ("p"), printing ``{"killed": bool, "status": int (as ``os.waitpid`` gives it), ...}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # forked children must not inherit OpenMP workers
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch
import tqdm
from peft import PeftModel, get_peft_model

from hf_projcomp import ProjCompConfig, cli, export, io
from hf_projcomp.projection import unwrap
from tests.tiny import tiny_model
from tests.tiny_tokenizers import TRAIN, tiny_tokenizer

torch.set_num_threads(1)
# tqdm's monitor thread takes tqdm's lock every few seconds: a child forked while it held it waited for
# ever at its first progress bar (a save's "Writing model shards"). No monitor thread, no such lock.
tqdm.tqdm.monitor_interval = 0

SAVE_SIZE = {
    "hidden_size": 1024,
    "intermediate_size": 2048,
    "num_hidden_layers": 4,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 64,
}  # ~39M parameters, ~150 MB of fp32 weights
CLI_TARGETS = {"A": "0.8", "B": "0.6"}
HANG_S = 120  # a save takes about a second: one silent this long is stuck


def _token_ids(tokenizer) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "pad_token_id": None,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def save_writers(work: Path, target: Path) -> dict[str, Callable[[Path, bool], None]]:
    """Writers for ``save``: ``save_compressed`` of one of two same-shaped models (seeds 0 and 1)."""
    tokenizer = tiny_tokenizer("byte_level")
    models = {
        name: tiny_model("llama", seed=seed, **SAVE_SIZE, **_token_ids(tokenizer))
        for name, seed in (("A", 0), ("B", 1))
    }
    return {
        name: (lambda out, overwrite, m=model: export.save_compressed(m, tokenizer, out, overwrite=overwrite))
        for name, model in models.items()
    }


def cli_writers(work: Path, target: Path) -> dict[str, Callable[[Path, bool], None]]:
    """Writers for ``cli``: ``projcomp compress`` of a tiny local model to 80% ("A") or 60% ("B")."""
    tokenizer = tiny_tokenizer("byte_level")
    base = work / "base"
    tiny_model("qwen2", **_token_ids(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    (base / "train.txt").write_text("\n".join(TRAIN * 20), encoding="utf-8")

    def run(budget: str, out: Path, overwrite: bool) -> None:
        cli.main(
            [
                "compress",
                "--model",
                str(base),
                "--calibration",
                str(base / "train.txt"),
                "--target-params",
                budget,
                "--num-sequences",
                "4",
                "--sequence-length",
                "64",
                "--output",
                str(out),
                "-q",
                *(["--overwrite"] if overwrite else []),
            ]
        )

    return {name: (lambda out, overwrite, b=budget: run(b, out, overwrite)) for name, budget in CLI_TARGETS.items()}


def adapter_writers(work: Path, target: Path) -> dict[str, Callable[[Path, bool], None]]:
    """Writers for ``adapter``: one projected-compression model, its adapter at two trained-looking states
    ("A", "B"; the configs differ too, in ``training_tokens``), saved with ``PeftModel.save_pretrained``."""
    base = tiny_model("llama", seed=0, **SAVE_SIZE)
    base.save_pretrained(work / "base")
    pc = get_peft_model(base, ProjCompConfig(hidden_size=512, intermediate_size=1024, importance="magnitude"))
    states = {}
    for seed, name in enumerate("AB"):
        gen = torch.Generator().manual_seed(seed)
        states[name] = {
            k: v + torch.randn(v.shape, generator=gen) * 0.01 if v.is_floating_point() else v
            for k, v in unwrap(pc).adapter_state_dict().items()
        }

    def save(name: str, out: Path, overwrite: bool) -> None:
        unwrap(pc).load_state_dict(states[name])
        pc.peft_config["default"].training_tokens = {"A": 1, "B": 2}[name]
        pc.save_pretrained(out)

    return {name: (lambda out, overwrite, n=name: save(n, out, overwrite)) for name in "AB"}


WRITERS = {"save": save_writers, "cli": cli_writers, "adapter": adapter_writers}


def fork_save(write: Callable[[Path, bool], None], target: Path) -> tuple[int, int]:
    """Start ``write(target, overwrite=True)`` in a child; returns its pid and a pipe that gets b"s"
    when ``save_compressed`` (or ``PeftModel.save_pretrained``) begins, b"p" when it begins
    publishing (``hf_projcomp.io._publish``) and b"e" when the save returns."""
    read, written = os.pipe()
    pid = os.fork()
    if pid:
        os.close(written)
        return pid, read
    try:  # the child: never return into the parent's code
        os.close(read)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        publish = io._publish
        io._publish = lambda *args, **kwargs: (os.write(written, b"p"), publish(*args, **kwargs))[1]
        real = export.save_compressed

        def signalling(*args, **kwargs):
            os.write(written, b"s")
            saved = real(*args, **kwargs)
            os.write(written, b"e")
            return saved

        export.save_compressed = signalling
        saving = PeftModel.save_pretrained
        PeftModel.save_pretrained = lambda *args, **kwargs: signalling_save(saving, written, *args, **kwargs)
        write(target, True)  # the writers look save_compressed and save_pretrained up when they call them
        os._exit(0)
    except BaseException:
        os._exit(1)


def signalling_save(save: Callable, pipe: int, *args, **kwargs) -> None:
    os.write(pipe, b"s")
    save(*args, **kwargs)
    os.write(pipe, b"e")


def run_once(write: Callable[[Path, bool], None], target: Path, delay: float, anchor: str = "s") -> dict:
    """One save over ``target``, killed ``delay`` s after it began (``anchor`` "s") or after it began
    publishing ("p"); not killed if ``delay`` < 0. The result says when (seconds from the start of
    the save) it began publishing and returned, where it got that far."""
    pid, pipe = fork_save(write, target)
    times: dict[str, float] = {}
    begun = None
    status = None
    while select.select([pipe], [], [], 120)[0] and (byte := os.read(pipe, 1)):
        begun = begun or time.perf_counter()
        times[byte.decode()] = time.perf_counter() - begun
        if byte.decode() == anchor and delay >= 0:
            time.sleep(delay)
            done, finished = os.waitpid(pid, os.WNOHANG)
            if done:
                status = finished
            else:
                os.kill(pid, signal.SIGKILL)
            break
    # Until the child is gone; one that stops writing for HANG_S is killed, so a hang fails instead of blocking.
    while select.select([pipe], [], [], HANG_S)[0]:
        if not os.read(pipe, 1):
            break
    else:
        os.kill(pid, signal.SIGKILL)
        times["hung"] = HANG_S
    os.close(pipe)
    if status is None:
        # Reaped here: the pid is dead now, as after a crash (a zombie would count as a live writer).
        _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return {
        "killed": killed,
        "status": status,
        "publish": times.get("p"),
        "end": times.get("e"),
        "hung": "hung" in times,
    }


def main(argv: list[str]) -> None:
    mode, work = argv[0], Path(argv[1])
    work.mkdir(parents=True, exist_ok=True)
    target = work / "out"
    writers = WRITERS[mode](work, target)
    refs = {name: str(work / f"ref-{name}") for name in writers}
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the protocol only
        for name, write in writers.items():
            write(Path(refs[name]), False)
        writers["A"](target, False)
    # One save over an existing output, timed as the kills will be: from the start of the save.
    runs = [run_once(writers[name], target, -1) for name in "BABA"]  # ends with "A" at the target
    assert all(run["status"] == 0 for run in runs), runs
    timing = {key: statistics.median(run[key] for run in runs) for key in ("publish", "end")}
    print(json.dumps({**timing, "target": str(target), "refs": refs}), flush=True)
    for line in sys.stdin:
        name, delay, anchor = line.split()
        print(json.dumps(run_once(writers[name], target, float(delay), anchor)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
