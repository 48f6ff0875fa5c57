"""Wall time of the README's main job as a newcomer runs it: `projcomp compress` and `projcomp eval` on
their defaults (bundled Gemma-3-270M, bundled text), each the real console command in a fresh process.

    python benchmarks/first_run.py [--repeats 3] [--previous]

Run it on an idle machine after the one-time GGUF conversion (`projcomp compress` once). Each command
runs ``--repeats`` times, alternating, and the median is reported; `projcomp --help` is timed too.
``--previous`` also times, once, the default this release replaced (calibration text sampled from the
model: ``--samples 16 --num-sequences 64``), beside the others, for the ratio. Writes
``benchmarks/results/first_run.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results"


def timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--previous", action="store_true")
    args = parser.parse_args()
    projcomp = shutil.which("projcomp")
    if projcomp is None:
        raise SystemExit("projcomp is not on PATH: pip install -e '.[demo]' first")
    work = Path(tempfile.mkdtemp(prefix="first-run-"))
    commands = {
        "projcomp --help": [projcomp, "--help"],
        "projcomp compress": [projcomp, "compress", "--overwrite"],
        "projcomp eval compressed-model": [projcomp, "eval", "compressed-model"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, command in commands.items():
            times[name].append(timed(command, work))
            print(name, round(times[name][-1], 1), flush=True)
    if args.previous:
        command = [
            projcomp,
            "compress",
            "--overwrite",
            "--samples",
            "16",
            "--num-sequences",
            "64",
            "--output",
            "previous",
        ]
        times["projcomp compress (previous default: 16 sampled texts, 64 sequences)"] = [timed(command, work)]
    shutil.rmtree(work, ignore_errors=True)
    results = {
        "machine": f"{os.cpu_count()} CPU cores, no GPU, {platform.machine()}",
        "date": date.today().isoformat(),
        "repeats": args.repeats,
        "seconds": times,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "first_run.json").write_text(json.dumps(results, indent=2) + "\n")
    compress = statistics.median(times["projcomp compress"])
    lines = [
        "# The README's main job, timed as a newcomer runs it",
        "",
        f"{results['machine']}, {results['date']}; demo model already converted; median of "
        f"{args.repeats} alternating runs, each a fresh process.",
        "",
        "| command | median (s) | all runs (s) | / compress |",
        "|---|---|---|---|",
    ]
    for name, measured in times.items():
        median = statistics.median(measured)
        lines.append(
            f"| `{name}` | {median:.2f} | {', '.join(f'{t:.2f}' for t in measured)} | {median / compress:.3f} |"
        )
    (OUT / "first_run.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
