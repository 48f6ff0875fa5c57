"""Prove that a refactor changed no output: hash every output of a fixed set of cases, then compare two runs.

Record (run from the checkout to test; ``hf_projcomp`` and ``tests`` are imported from it)::

    python benchmarks/equivalence.py OUT_DIR [--demo] [--only SUBSTRING ...]

writes ``OUT_DIR/manifest.json``: per case, the SHA-256 of every output tensor (by name) and of every output
file that must be byte-identical, with the tensors (``OUT_DIR/tensors``) and files (``OUT_DIR/files``) kept
beside it so that a later comparison can report how far apart differing floats are. Compare::

    python benchmarks/equivalence.py --compare A/manifest.json B/manifest.json [--all] [--only SUBSTRING ...]

prints a table (case, artifact, ``identical`` or what differs: max abs difference for tensors and GGUF
tensors) and exits 1 if anything differs at all (bit-identical is the expectation). Adapter key names may
change between versions: adapter tensors missing under their old names pass when the name-independent
fingerprint (sorted (shape, dtype, sha256)) is identical; key lists and the model card (README.md, which may
carry a version) are reported but never fail.

Cases (tiny models from ``tests/tiny.py``, one thread, all seeded):

* ``projcomp-magnitude/<model_type>`` for every family in ``MODEL_TYPES``: ``get_projcomp_model`` with the
  tests' target sizes, every trainable parameter nudged by seeded noise (x0.01); the saved adapter's tensors,
  its key list and fingerprint, logits of the PEFT model, of the adapter reloaded with
  ``PeftModel.from_pretrained`` and of ``merge_and_unload()``'s model, the merged state dict and the GGUF file
  (or ``refused: <message>``). The tiny model's vocabulary is sized to a test tokenizer (and Gemma's
  ``query_pre_attn_scalar`` set to its head_dim) so that the GGUF export has a tokenizer that fits.
* ``projcomp-activation/<llama|gemma3_text>``: the same with activation importance (fixed random token
  batches, seed 1).
* ``compact/<gemma3_text|qwen2>``: ``compact_prune`` to 80% on the test tokenizers; pruned tensors, logits,
  and every file ``save_compressed`` writes (README.md as the informational ``card``).
* ``demo`` (``--demo``, minutes): ``projcomp compress -q`` (all defaults: the demo Gemma-3-270M to 50%) and
  ``projcomp export`` to GGUF, run as subprocesses of this checkout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ACTIVATION_TYPES = ("llama", "gemma3_text")
COMPACT_CASES = (("gemma3_text", "byte_fallback"), ("qwen2", "byte_level"))
COMPACT_KWARGS = {"target_params": 0.8, "num_sequences": 4, "sequence_length": 64, "heldout_tokens": 64}
INFO = "info"  # reported, never fails
RENAMABLE = "renamable"  # may be missing under this name if the case's adapter fingerprint is identical


def checkout_root() -> Path:
    """The checkout under test: the working directory when it is one, else the parent of ``benchmarks/``."""
    cwd = Path.cwd().resolve()
    if (cwd / "hf_projcomp").is_dir() and (cwd / "tests" / "tiny.py").is_file():
        return cwd
    return Path(__file__).resolve().parent.parent


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_sha(tensor: Any) -> str:
    """SHA-256 of a tensor's raw bytes (any dtype, bfloat16 included)."""
    import torch

    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return sha256_bytes(flat.view(torch.uint8).numpy().tobytes())


def tensor_entry(tensor: Any, file: str, key: str, policy: str = "exact") -> dict[str, Any]:
    return {
        "kind": "tensor",
        "sha256": tensor_sha(tensor),
        "shape": list(tensor.shape),
        "dtype": str(tensor.dtype).replace("torch.", ""),
        "file": file,
        "key": key,
        "policy": policy,
    }


class Recorder:
    """Collects one case's artifacts; tensors are stored in ``OUT/tensors/<case>.safetensors``."""

    def __init__(self, out: Path, case: str) -> None:
        self.out, self.case, self.slug = out, case, case.replace("/", "__")
        self.artifacts: dict[str, dict[str, Any]] = {}
        self._tensors: dict[str, Any] = {}

    def tensor(self, name: str, tensor: Any, policy: str = "exact") -> None:
        self._tensors[name] = tensor.detach().cpu().clone().contiguous()
        self.artifacts[name] = tensor_entry(tensor, f"tensors/{self.slug}.safetensors", name, policy)

    def value(self, name: str, value: Any, policy: str = "exact", kind: str = "json") -> None:
        text = json.dumps(value, sort_keys=True)
        self.artifacts[name] = {"kind": kind, "sha256": sha256_bytes(text.encode()), "value": value, "policy": policy}

    def file(self, name: str, path: Path, policy: str = "exact") -> None:
        """Hash ``path`` and keep it: a copy under ``OUT/files/<case>/`` unless it is already under ``OUT``."""
        if path.resolve().is_relative_to(self.out.resolve()):
            rel = Path(os.path.relpath(path.resolve(), self.out.resolve()))
        else:
            rel = Path("files") / self.slug / name.replace("/", "__")
            (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.out / rel)
        self.artifacts[name] = {
            "kind": "file",
            "sha256": sha256_file(path),
            "size": path.stat().st_size,
            "file": str(rel),
            "policy": policy,
        }

    def finish(self) -> None:
        from safetensors.torch import save_file

        if self._tensors:
            (self.out / "tensors").mkdir(parents=True, exist_ok=True)
            save_file(self._tensors, str(self.out / "tensors" / f"{self.slug}.safetensors"))


# ----------------------------------------------------------------------------------------------- inputs
def fixed_input(vocab_size: int, seed: int = 2) -> Any:
    import torch

    return torch.randint(0, vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed))


def activation_calibration(vocab_size: int) -> list[Any]:
    """A few fixed random token batches (seed 1)."""
    import torch

    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab_size, (2, 16), generator=g) for _ in range(3)]


def logits(model: Any, ids: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits


def tokenizer_for(kind: str = "byte_level") -> Any:
    """A test tokenizer. Byte-level: its one special token also as unk and pad, as ``AutoTokenizer`` reloads it
    for Qwen2 (else ``save_compressed``'s verification refuses the difference); the byte-fallback one has no
    exact sentencepiece model, so its GGUF export would only be refused."""
    from tests.tiny_tokenizers import tiny_tokenizer

    tokenizer = tiny_tokenizer(kind)
    if kind == "byte_level":
        tokenizer.unk_token = tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def base_model(model_type: str, tokenizer: Any) -> Any:
    """``tiny_model(model_type)`` with its vocabulary (and special ids) fitted to ``tokenizer`` for GGUF."""
    from tests.tiny import TINY, tiny_model

    ids = {
        f"{n}_token_id": tokenizer.convert_tokens_to_ids(getattr(tokenizer, f"{n}_token"))
        for n in ("bos", "eos", "pad")
        if getattr(tokenizer, f"{n}_token")
    }
    extra = {"query_pre_attn_scalar": TINY["head_dim"]} if model_type in ("gemma3_text", "gemma2") else {}
    return tiny_model(model_type, **{"vocab_size": len(tokenizer), "pad_token_id": None, **ids, **extra})


# ----------------------------------------------------------------------------------------------- recording
def record_adapter(rec: Recorder, directory: Path) -> None:
    """The saved adapter's tensors by name, their key list and a name-independent fingerprint."""
    from safetensors.torch import load_file

    tensors = load_file(str(directory / "adapter_model.safetensors"))
    for key, tensor in tensors.items():
        rec.tensor(f"adapter/{key}", tensor, policy=RENAMABLE)
    rec.value("adapter.keys", sorted(tensors), policy=INFO)
    fingerprint = sorted((list(t.shape), str(t.dtype), tensor_sha(t)) for t in tensors.values())
    rec.value("adapter.fingerprint", fingerprint)


def record_state_dict(rec: Recorder, prefix: str, model: Any) -> None:
    for key, tensor in model.state_dict().items():
        rec.tensor(f"{prefix}/{key}", tensor)


def record_gguf(rec: Recorder, model: Any, tokenizer: Any, directory: Path) -> None:
    """The GGUF file's bytes, or the exporter's refusal."""
    from hf_projcomp.export import save_gguf

    try:
        path = save_gguf(model, tokenizer, directory / "model.gguf")
    except ValueError as err:  # GGUFExportError is one
        rec.value("gguf", f"refused: {err}", kind="refused")
        return
    rec.file("gguf", Path(path))


def nudge(peft_model: Any) -> None:
    """Seeded noise (x0.01) on every trainable parameter, so P, A and the norms all differ from their init."""
    import torch

    from hf_projcomp.projection import unwrap

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in unwrap(peft_model).trainable_parameters():
            noise = torch.randn(param.shape, generator=g, dtype=torch.float32)
            param.add_((noise * 0.01).to(device=param.device, dtype=param.dtype))


# ----------------------------------------------------------------------------------------------- cases
def projcomp_case(rec: Recorder, model_type: str, importance: str) -> None:
    """Projected compression: adapter, reload, merge, GGUF."""
    from peft import PeftModel

    from hf_projcomp import ProjCompConfig, get_projcomp_model
    from tests.tiny import target_sizes

    tokenizer = tokenizer_for()
    model = base_model(model_type, tokenizer)
    vocab = model.config.vocab_size
    calibration = activation_calibration(vocab) if importance == "activation" else None
    config = ProjCompConfig(**target_sizes(model_type), importance=importance)
    peft_model = get_projcomp_model(model, config, calibration_data=calibration, progress=False)
    nudge(peft_model)
    ids = fixed_input(vocab)
    rec.tensor("logits/peft", logits(peft_model, ids))
    with tempfile.TemporaryDirectory() as tmp:
        peft_model.save_pretrained(tmp)
        record_adapter(rec, Path(tmp))
        reloaded = PeftModel.from_pretrained(base_model(model_type, tokenizer), tmp)
        rec.tensor("logits/reloaded", logits(reloaded, ids))
        merged = peft_model.merge_and_unload()
        record_state_dict(rec, "merged", merged)
        rec.tensor("logits/merged", logits(merged, ids))
        record_gguf(rec, merged, tokenizer, Path(tmp))


def record_saved_folder(rec: Recorder, directory: Path, prefix: str = "saved") -> None:
    """Every file of a saved model folder (README.md as the informational ``card``); safetensors by tensor."""
    from safetensors import safe_open

    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel == "README.md":
            rec.file("card", path, policy=INFO)
            continue
        rec.file(f"{prefix}/{rel}", path)
        if path.suffix == ".safetensors":
            file = rec.artifacts[f"{prefix}/{rel}"]["file"]
            with safe_open(str(path), "pt") as f:
                for key in f.keys():
                    rec.artifacts[f"{prefix}/{rel}:{key}"] = tensor_entry(f.get_tensor(key), file, key)


def compact_case(rec: Recorder, model_type: str, kind: str) -> None:
    """COMPACT pruning with a test tokenizer, then the verified save."""
    from hf_projcomp import compact_prune
    from hf_projcomp.export import save_compressed
    from tests.test_compact import model_for
    from tests.tiny_tokenizers import TRAIN

    tokenizer = tokenizer_for(kind)
    model = model_for(model_type, tokenizer)
    small, small_tok, _ = compact_prune(model, tokenizer, TRAIN * 4, progress=False, **COMPACT_KWARGS)
    record_state_dict(rec, "pruned", small)
    rec.tensor("logits/pruned", logits(small, fixed_input(small.config.vocab_size)))
    rec.value("tokenizer.len", len(small_tok))
    with tempfile.TemporaryDirectory() as tmp:
        out = save_compressed(small, small_tok, Path(tmp) / "out")
        record_saved_folder(rec, Path(out))


def run_cli(root: Path, *args: str) -> float:
    """``python -m hf_projcomp.cli ARGS`` on this checkout; its runtime."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "hf_projcomp.cli", *args], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    if run.returncode != 0:
        raise RuntimeError(f"projcomp {' '.join(args)} exited {run.returncode}:\n{run.stderr[-4000:]}")
    return time.perf_counter() - start


def demo_case(rec: Recorder, root: Path) -> None:
    """The CLI's defaults on the demo Gemma-3-270M: compress to 50%, export to GGUF (outputs kept in OUT/demo)."""
    out = rec.out / "demo"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    seconds = run_cli(root, "compress", "--output", str(out / "compressed"), "-q")
    rec.value("compress.seconds", round(seconds, 1), policy=INFO)
    seconds = run_cli(root, "export", str(out / "compressed"), "--gguf", str(out / "model.gguf"), "-q")
    rec.value("export.seconds", round(seconds, 1), policy=INFO)
    record_saved_folder(rec, out / "compressed")
    rec.file("gguf", out / "model.gguf")


# ----------------------------------------------------------------------------------------------- record
def all_cases(root: Path, demo: bool) -> dict[str, Callable[[Recorder], None]]:
    """Case name -> function recording it."""
    from tests.tiny import MODEL_TYPES

    cases: dict[str, Callable[[Recorder], None]] = {}
    for mt in MODEL_TYPES:
        cases[f"projcomp-magnitude/{mt}"] = lambda rec, mt=mt: projcomp_case(rec, mt, "magnitude")
    for mt in ACTIVATION_TYPES:
        cases[f"projcomp-activation/{mt}"] = lambda rec, mt=mt: projcomp_case(rec, mt, "activation")
    for mt, kind in COMPACT_CASES:
        cases[f"compact/{mt}"] = lambda rec, mt=mt, kind=kind: compact_case(rec, mt, kind)
    if demo:
        cases["demo"] = lambda rec: demo_case(rec, root)
    return cases


def run_case(out: Path, name: str, fn: Callable[[Recorder], None]) -> dict[str, Any]:
    """One case's manifest entry; an exception is recorded as the ``error`` artifact (and printed)."""
    rec = Recorder(out, name)
    start = time.perf_counter()
    try:
        fn(rec)
    except Exception as err:
        traceback.print_exc()
        rec.value("error", f"{type(err).__name__}: {err}")
    rec.finish()
    seconds = time.perf_counter() - start
    print(f"{name:40s} {len(rec.artifacts):4d} artifacts  {seconds:7.1f} s", flush=True)
    return {"seconds": round(seconds, 2), "artifacts": rec.artifacts}


def environment(root: Path) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    import hf_projcomp

    def git(*args: str) -> str:
        run = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
        return run.stdout.strip()

    return {
        "root": str(root),
        "hf_projcomp_file": hf_projcomp.__file__,
        "hf_projcomp": hf_projcomp.__version__,
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
    }


def record(out: Path, demo: bool, only: list[str]) -> None:
    """Run the cases and write ``out/manifest.json``."""
    import torch

    torch.set_num_threads(1)
    root = checkout_root()
    sys.path.insert(0, str(root))
    import hf_projcomp

    if not Path(hf_projcomp.__file__).resolve().is_relative_to(root):
        sys.exit(
            f"hf_projcomp imports from {hf_projcomp.__file__}, not from the checkout {root}: run with PYTHONPATH={root}"
        )
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("tensors", "files"):
        shutil.rmtree(out / stale, ignore_errors=True)
    manifest: dict[str, Any] = {"environment": environment(root), "cases": {}}
    print(f"hf_projcomp {hf_projcomp.__file__}", flush=True)
    start = time.perf_counter()
    for name, fn in all_cases(root, demo).items():
        if not only or any(s in name for s in only):
            manifest["cases"][name] = run_case(out, name, fn)
    manifest["seconds"] = round(time.perf_counter() - start, 1)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out / 'manifest.json'} ({manifest['seconds']} s)")


# ----------------------------------------------------------------------------------------------- compare
def load_tensor(manifest: Path, entry: dict[str, Any]) -> Any:
    from safetensors import safe_open

    if not entry.get("file") or not (manifest.parent / entry["file"]).is_file():
        return None
    with safe_open(str(manifest.parent / entry["file"]), "pt") as f:
        return f.get_tensor(entry["key"]) if entry["key"] in f.keys() else None


def max_abs(a: Any, b: Any) -> str:
    """``max abs diff X`` between two arrays / tensors of one shape (else the mismatch)."""
    import torch

    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        return f"shape {list(a.shape)} vs {list(b.shape)}"
    if not (a.is_floating_point() and b.is_floating_point()):
        return f"{int((a != b).sum())} of {a.numel()} elements differ"
    diff = (a.double() - b.double()).abs()
    return f"max abs diff {diff.max().item():.3g}" + (f" ({a.dtype} vs {b.dtype})" if a.dtype != b.dtype else "")


def gguf_difference(path_a: Path, path_b: Path) -> str:
    """What differs between two GGUF files: metadata fields, tensor names, largest tensor difference."""
    import gguf

    readers = [gguf.GGUFReader(p) for p in (path_a, path_b)]
    fields = [{k: str(f.contents()) for k, f in r.fields.items()} for r in readers]
    tensors = [{t.name: t for t in r.tensors} for r in readers]
    parts = []
    changed = sorted(k for k in fields[0].keys() | fields[1].keys() if fields[0].get(k) != fields[1].get(k))
    if changed:
        parts.append(f"metadata {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}")
    if tensors[0].keys() != tensors[1].keys():
        parts.append("tensor names differ")
    worst, worst_name = 0.0, None
    for name in tensors[0].keys() & tensors[1].keys():
        a, b = (gguf.quants.dequantize(t.data, t.tensor_type) for t in (tensors[0][name], tensors[1][name]))
        if a.shape == b.shape and a.size and (d := float(abs(a.astype("float64") - b.astype("float64")).max())) > worst:
            worst, worst_name = d, name
    parts.append(f"max abs tensor diff {worst:.3g}" + (f" ({worst_name})" if worst_name else ""))
    return "; ".join(parts)


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def describe(paths: tuple[Path, Path], a: dict[str, Any], b: dict[str, Any]) -> str:
    """A human description of how two differing artifacts differ."""
    if a["kind"] != b["kind"]:
        return f"{a['kind']} vs {b['kind']}: {a.get('value', '')!s:.60} | {b.get('value', '')!s:.60}"
    if a["kind"] == "tensor":
        ta, tb = load_tensor(paths[0], a), load_tensor(paths[1], b)
        return "tensor data unavailable" if ta is None or tb is None else max_abs(ta, tb)
    if a["kind"] == "file":
        fa, fb = (p.parent / e["file"] if e.get("file") else None for p, e in zip(paths, (a, b), strict=True))
        if fa and fb and fa.is_file() and fb.is_file() and is_gguf(fa) and is_gguf(fb):
            return "bytes differ; " + gguf_difference(fa, fb)
        return f"bytes differ ({a['size']} vs {b['size']} bytes)"
    return f"{a.get('value')!s:.60} | {b.get('value')!s:.60}"


Row = tuple[str, str, str, bool]  # case, artifact, result, fails


def compare_artifact(
    paths: tuple[Path, Path], name: str, a: dict | None, b: dict | None, renamed_ok: bool
) -> tuple[str, bool]:
    """(result, fails) for one artifact present in at least one manifest."""
    entry = a or b
    lenient = entry["policy"] == INFO or (entry["policy"] == RENAMABLE and renamed_ok)
    if a is None or b is None:
        where = "only in A" if b is None else "only in B"
        return (
            f"{where} (renamed; fingerprint identical)" if renamed_ok and entry["policy"] == RENAMABLE else where
        ), entry["policy"] != INFO and not lenient
    if a["sha256"] == b["sha256"]:
        return "identical", False
    result = describe(paths, a, b)
    return (result + (" [informational]" if entry["policy"] == INFO else "")), entry["policy"] != INFO


def compare_case(paths: tuple[Path, Path], name: str, a: dict | None, b: dict | None) -> list[Row]:
    if a is None or b is None:
        return [(name, "*", "case only in A" if b is None else "case only in B", True)]
    fa, fb = a["artifacts"].get("adapter.fingerprint"), b["artifacts"].get("adapter.fingerprint")
    renamed_ok = bool(fa and fb and fa["sha256"] == fb["sha256"])
    rows = []
    for artifact in sorted(a["artifacts"].keys() | b["artifacts"].keys()):
        result, fails = compare_artifact(
            paths, artifact, a["artifacts"].get(artifact), b["artifacts"].get(artifact), renamed_ok
        )
        rows.append((name, artifact, result, fails))
    return rows


def print_table(rows: list[Row], cases: dict[str, tuple[Any, Any]], show_all: bool) -> None:
    """Differing rows (all rows with ``show_all``) and, per case, how many artifacts are identical."""
    width = max([len(r[1]) for r in rows] + [8])
    print(f"{'case':34s} {'artifact':{width}s} result")
    for case in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == case]
        same = sum(r[2] == "identical" for r in mine)
        for _, artifact, result, fails in mine:
            if show_all or result != "identical":
                print(f"{case:34s} {artifact:{width}s} {'FAIL ' if fails else ''}{result}")
        a, b = cases[case]
        times = " / ".join(f"{c['seconds']:.1f}s" if c else "-" for c in (a, b))
        print(f"{case:34s} {'(summary)':{width}s} {same} of {len(mine)} identical  [{times}]")


def compare(path_a: Path, path_b: Path, show_all: bool, only: list[str]) -> int:
    """Print the comparison table; 1 if anything differs beyond what may (informational, renamed keys)."""
    manifests = [json.loads(p.read_text()) for p in (path_a, path_b)]
    for label, m in zip("AB", manifests, strict=True):
        env = m["environment"]
        print(
            f"{label}: {env['hf_projcomp_file']} commit {env['commit'][:10]}{' (dirty)' if env['dirty'] else ''}, "
            f"torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}"
        )
    for key in ("torch", "transformers", "peft", "machine"):
        if manifests[0]["environment"][key] != manifests[1]["environment"][key]:
            print(f"warning: {key} differs between the runs; differences may come from it")
    names = sorted(
        n for n in manifests[0]["cases"].keys() | manifests[1]["cases"].keys() if not only or any(s in n for s in only)
    )
    cases = {n: (manifests[0]["cases"].get(n), manifests[1]["cases"].get(n)) for n in names}
    rows = [row for n in names for row in compare_case((path_a, path_b), n, *cases[n])]
    print_table(rows, cases, show_all)
    failing = [r for r in rows if r[3]]
    print(
        f"\n{len(rows) - len(failing)} of {len(rows)} artifacts pass in {len(names)} cases; "
        f"{len(failing)} differ" + (" -> NOT equivalent" if failing else " -> equivalent (bit-identical)")
    )
    return 1 if failing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", type=Path, help="record: where manifest.json and its data go")
    parser.add_argument("--demo", action="store_true", help="also the demo Gemma-3-270M through the CLI (minutes)")
    parser.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="SUBSTRING",
        help="record / compare only the cases whose name contains one of these",
    )
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="compare two manifest.json files")
    parser.add_argument("--all", action="store_true", help="with --compare: print identical artifacts too")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare, show_all=args.all, only=args.only)
    if args.out_dir is None:
        parser.error("give OUT_DIR to record, or --compare A B")
    record(args.out_dir, args.demo, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
