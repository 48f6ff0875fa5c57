"""Peak resident memory of every path the README documents, on the demo Gemma-3-270M.

Command-line paths run as their own processes (peak from ``os.wait4``). The README's Python blocks run in
order in one session, as a reader pastes them; the session's peak is reset before each block
(``/proc/self/clear_refs``), so each block's figure is its own peak with the earlier blocks' objects
still alive. Speed-only changes: the TRL block trains 3 steps instead of 100 (memory peaks in the first
step), and the Hub is the recording stand-in of ``tests/fake_hub.py``.

    python benchmarks/readme_memory.py        # writes benchmarks/results/readme_memory.{json,md}
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SUBSTITUTIONS = [("max_steps=100", "max_steps=3")]
CLI = [
    ("projcomp compress (defaults)", ["compress", "-q", "--output", "compressed-model"]),
    (
        "projcomp compress --target-params 0.4 --distill-tokens 32768",
        ["compress", "-q", "--target-params", "0.4", "--distill-tokens", "32768", "--output", "distilled"],
    ),
    ("projcomp eval compressed-model", ["eval", "compressed-model", "-q"]),
    ("projcomp export compressed-model --gguf", ["export", "compressed-model", "--gguf", "compressed.gguf", "-q"]),
]
# After the Python session, which writes adapter/ and a training text.
CLI_AFTER = [
    ("projcomp merge adapter --output merged-cli", ["merge", "adapter", "--output", "merged-cli", "-q"]),
    (
        "projcomp train (README's example flags, 4 steps)",
        [
            "train",
            "--train_file",
            "train.txt",
            "--hidden_size",
            "512",
            "--intermediate_size",
            "1024",
            "--importance",
            "activation",
            "--calibration_sequences",
            "8",
            "--block_size",
            "256",
            "--output_dir",
            "out/pc",
            "--max_steps",
            "4",
            "--per_device_train_batch_size",
            "2",
            "--gradient_accumulation_steps",
            "2",
            "--save_strategy",
            "no",
            "--use_cpu",
            "--report_to",
            "none",
        ],
    ),
]
SESSION_PRELUDE = """
import resource, sys, time
sys.path.insert(0, {root!r})
from tests.fake_hub import install
install("hub.log")
def _reset():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
"""


def peak_of(cmd: list[str], cwd: Path) -> tuple[int, float]:
    """(peak resident bytes, seconds) of ``cmd`` run to completion; fails on a non-zero exit."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "HF_TOKEN": "hf_x"})
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed")
    return usage.ru_maxrss * 1024, time.perf_counter() - start


def readme_blocks() -> list[tuple[str, str]]:
    """(the heading above it, code) of every Python block of the README, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    out = []
    for match in re.finditer(r"```python\n(.*?)```", text, re.S):
        headings = re.findall(r"^#+ (.+)$", text[: match.start()], re.M)
        out.append((headings[-1] if headings else "README", match.group(1)))
    return out


def session_script() -> str:
    script = SESSION_PRELUDE.format(root=str(ROOT))
    for i, (first, block) in enumerate(readme_blocks()):
        for old, new in SUBSTITUTIONS:
            block = block.replace(old, new)
        script += f"\n_reset(); _t = time.perf_counter()\n{block}\n"
        script += f"print('PEAK', {i}, {first!r}, _peak(), time.perf_counter() - _t, flush=True)\n"
    return script


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as work:
        cwd = Path(work)
        for name, args in CLI:
            peak, seconds = peak_of([sys.executable, "-m", "hf_projcomp.cli", *args], cwd)
            rows.append({"path": name, "peak_bytes": peak, "seconds": round(seconds, 1)})
            print(rows[-1], flush=True)
        (cwd / "session.py").write_text(session_script())
        from hf_projcomp.texts import CALIBRATION, bundled_text

        (cwd / "train.txt").write_text(str(bundled_text(CALIBRATION)))
        run = subprocess.run(
            [sys.executable, "session.py"],
            cwd=cwd,
            capture_output=True,
            text=True,
            env={**os.environ, "HF_TOKEN": "hf_x"},
        )
        if run.returncode:
            raise RuntimeError(run.stderr[-4000:])
        for line in run.stdout.splitlines():
            if line.startswith("PEAK "):
                _, index, rest = line.split(" ", 2)
                first, peak, seconds = rest.rsplit(" ", 2)
                rows.append(
                    {
                        "path": f"README Python block {index} ({first})",
                        "peak_bytes": int(peak),
                        "seconds": round(float(seconds), 1),
                    }
                )
                print(rows[-1], flush=True)
        for name, args in CLI_AFTER:
            peak, seconds = peak_of([sys.executable, "-m", "hf_projcomp.cli", *args], cwd)
            rows.append({"path": name, "peak_bytes": peak, "seconds": round(seconds, 1)})
            print(rows[-1], flush=True)
    machine = f"{os.cpu_count()} CPU cores, {platform.machine()}, no GPU, Python {platform.python_version()}"
    import torch

    results = {"machine": machine, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "readme_memory.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Peak memory of the README's paths (demo Gemma-3-270M)",
        "",
        f"{machine}; torch {results['torch']}; {results['date']}. `python benchmarks/readme_memory.py`.",
        "Python blocks: one session in README order, peak reset before each block (earlier objects alive).",
        "",
        "Seconds are in the JSON file only: the machine ran other work beside this, so they are no timing.",
        "",
        "| path | peak resident memory |",
        "|---|---|",
        *(f"| {r['path']} | {r['peak_bytes'] / 1e9:.1f} GB |" for r in rows),
    ]
    (RESULTS / "readme_memory.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
