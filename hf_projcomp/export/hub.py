"""``push_to_hub``: a verified checkpoint directory to the Hub in one commit, with our model card."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi

from .verify import check_checkpoint

REQUIRED_FILES = ("config.json", "README.md")


def push_to_hub(
    out_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload compressed model (hf_projcomp)",
    revision: str | None = None,
) -> Any:
    """Create ``repo_id`` if needed and upload every file of ``out_dir`` in a single commit.

    The directory is checked first (:func:`~hf_projcomp.export.check_checkpoint`: config, tokenizer
    and tokenizer side files agree), so nothing inconsistent reaches the Hub. The README is the card
    :func:`save_compressed` wrote, uploaded as is (transformers' ``push_to_hub`` would generate its
    own). Returns huggingface_hub's ``CommitInfo``.
    """
    root = Path(out_dir)
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if not root.is_dir() or missing or not any(root.glob("*.safetensors")):
        raise ValueError(
            f"{root} is not a saved compressed model (needs {', '.join(REQUIRED_FILES)} and safetensors weights; "
            "write it with save_compressed or `projcomp compress`)"
        )
    check_checkpoint(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.relative_to(root).parts[0].startswith("."))
    operations = [CommitOperationAdd(path_in_repo=p.relative_to(root).as_posix(), path_or_fileobj=str(p)) for p in files]
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.create_commit(
        repo_id, operations, commit_message=commit_message, repo_type="model", revision=revision
    )
