"""The Hub route of a ProjComp adapter, offline, at the ``huggingface_hub`` API boundary (run by tests).

    HF_HUB_OFFLINE=1 HF_HUB_CACHE=CACHE python tests/scripts/peft_hub.py push CACHE BASE_DIR OUT
    HF_HUB_OFFLINE=1 HF_HUB_CACHE=CACHE python tests/scripts/peft_hub.py load CACHE BASE_DIR OUT

The cache plays the Hub: a repository there is what ``hf_hub_download`` resolves offline.

``push`` puts the tiny base (with its tokenizer) in the cache as ``me/tiny-base``, loads it by that
id, builds an adapter with ``peft.get_peft_model`` (COMPACT importance, so the pruned tokenizer
travels too), nudges every trainable tensor, and calls ``push_to_hub("me/tiny-pc")``. The stand-in
``create_commit`` writes the commit's files as a new snapshot of that repository in the cache and
logs the call; ``OUT/expected.safetensors`` holds the logits before pushing.

``load``, in a fresh process, loads ``me/tiny-pc`` by repo id through ``PeftModel.from_pretrained``
and ``AutoPeftModelForCausalLM.from_pretrained`` (whose base comes from the adapter's config), with
``hf_hub_download`` answering from the pushed snapshots as the Hub would, and writes their logits,
and every (repo, file) ``hf_hub_download`` was asked for, to ``OUT``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import hf_projcomp  # noqa: F401  (registers the method with PEFT)

BASE_ID, ADAPTER_ID = "me/tiny-base", "me/tiny-pc"
TEXT = "The European lobster is a species of clawed lobster."


def snapshot(cache: Path, repo_id: str, files: dict[str, bytes]) -> str:
    """Write ``files`` as a new commit of ``repo_id`` in the cache (the layout ``hf_hub_download`` reads)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(
        json.dumps(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in files.items())).encode()
    ).hexdigest()
    for name, data in files.items():
        path = repo / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return commit


def install_fake_hub(cache: Path, log: Path) -> None:
    from huggingface_hub import CommitInfo, HfApi, RepoUrl

    def create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, **kwargs):
        files = {}
        for op in operations:
            source = op.path_or_fileobj
            files[op.path_in_repo] = source if isinstance(source, bytes) else Path(source).read_bytes()
        commit = snapshot(cache, repo_id, files)
        with log.open("a") as f:
            f.write(json.dumps({"repo_id": repo_id, "files": sorted(files)}) + "\n")
        url = f"https://huggingface.co/{repo_id}/commit/{commit}"
        return CommitInfo(
            commit_url=url, commit_message=kwargs.get("commit_message") or "", commit_description="", oid=commit
        )

    HfApi.create_repo = create_repo
    HfApi.create_commit = create_commit


def logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(TEXT, return_tensors="pt")).logits


def push(cache: Path, base_dir: Path, out: Path) -> None:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from hf_projcomp import ProjCompConfig

    snapshot(cache, BASE_ID, {p.name: p.read_bytes() for p in base_dir.iterdir() if p.is_file()})
    base = AutoModelForCausalLM.from_pretrained(BASE_ID)
    config = ProjCompConfig(
        hidden_size=48,
        intermediate_size=64,
        vocab_size=400,
        importance="compact",
        calibration_data=str(base_dir / "train.txt"),
    )
    pc = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pc.base_model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.01)
    install_fake_hub(cache, out / "commits.jsonl")
    save_file({"logits": logits(pc, pc.base_model.tokenizer)}, out / "expected.safetensors")
    pc.push_to_hub(ADAPTER_ID)


def serve_from_snapshots(resolved: list) -> None:
    """``hf_hub_download`` resolves through the snapshots as the Hub would answer: a file the commit
    holds, or a 404 (remembered in the cache's ``.no_exist``, as a real 404 is) for one it lacks."""
    import huggingface_hub.file_download as file_download
    from huggingface_hub.errors import EntryNotFoundError

    def download(*, cache_dir, repo_id, filename, revision, **kwargs):
        resolved.append([repo_id, filename])
        repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
        commit = revision if (repo / "snapshots" / revision).is_dir() else (repo / "refs" / revision).read_text()
        path = repo / "snapshots" / commit / filename
        if path.is_file():
            return str(path)
        missing = repo / ".no_exist" / commit / filename
        missing.parent.mkdir(parents=True, exist_ok=True)
        missing.touch()
        raise EntryNotFoundError(f"404: {repo_id}@{commit} has no {filename}")

    file_download._hf_hub_download_to_cache_dir = download


def load(cache: Path, base_dir: Path, out: Path) -> None:
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    resolved: list = []
    serve_from_snapshots(resolved)
    found = {}
    pc = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE_ID), ADAPTER_ID)
    found["peft_model"] = logits(pc, pc.base_model.tokenizer)
    auto = AutoPeftModelForCausalLM.from_pretrained(ADAPTER_ID)
    found["auto_peft_model"] = logits(auto, auto.base_model.tokenizer)
    save_file(found, out / "found.safetensors")
    (out / "resolved.json").write_text(json.dumps(resolved))


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, cache, base_dir, out = sys.argv[1], *map(Path, sys.argv[2:5])
    {"push": push, "load": load}[mode](cache, base_dir, out)
