"""``push_to_hub``: a verified checkpoint directory to the Hub in one commit, with our model card."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError

from .verify import check_checkpoint

REQUIRED_FILES = ("config.json", "README.md")


class HubError(OSError):
    """The Hub refused or could not be reached (one line: what failed and why)."""


def _is_network_error(err: Exception) -> bool:
    """An HTTP refusal or a transport failure, whichever HTTP client this huggingface_hub uses."""
    clients = ("httpx", "httpx2", "requests", "urllib3")
    return isinstance(err, (HfHubHTTPError, OSError)) or any(
        cls.__module__.split(".")[0] in clients for cls in type(err).__mro__
    )


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

    Raises:
        ValueError: the directory is not a saved model, or no token is available (``token``,
            ``HF_TOKEN`` or a saved login), before any network call.
        VerificationError: the directory contradicts itself.
        HubError: the Hub refused the upload or could not be reached.
    """
    root = Path(out_dir).resolve()
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if not root.is_dir() or missing or not any(root.glob("*.safetensors")):
        raise ValueError(
            f"{root} is not a saved compressed model (needs {', '.join(REQUIRED_FILES)} and safetensors weights; "
            "write it with save_compressed or `projcomp compress`)"
        )
    check_checkpoint(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.relative_to(root).parts[0].startswith("."))
    operations = [
        CommitOperationAdd(path_in_repo=p.relative_to(root).as_posix(), path_or_fileobj=str(p)) for p in files
    ]
    # The card's usage snippet named the local directory; on the Hub it loads the repo.
    card = (root / "README.md").read_text(encoding="utf-8")
    card = card.replace(f'from_pretrained("{root.name}")', f'from_pretrained("{repo_id}")')
    operations = [
        op if op.path_in_repo != "README.md" else CommitOperationAdd("README.md", card.encode("utf-8"))
        for op in operations
    ]
    token = token or get_token()
    if not token:
        raise ValueError("no Hugging Face token: pass one (--token), set HF_TOKEN, or log in with `hf auth login`")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.create_commit(
            repo_id, operations, commit_message=commit_message, repo_type="model", revision=revision
        )
    except Exception as err:
        if not _is_network_error(err):
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubError(f"could not push {root} to {repo_id}: {reason}") from err
