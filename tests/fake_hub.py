"""An offline stand-in for the Hub at the huggingface_hub API boundary, for CLI subprocesses."""

from __future__ import annotations

import json

from huggingface_hub import HfApi


def install(log_path: str) -> None:
    """Record create_repo / create_commit calls (with file paths and sizes) to ``log_path``."""

    def record(entry: dict) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def create_repo(self, repo_id, **kwargs):
        record({"call": "create_repo", "repo_id": repo_id, "private": kwargs.get("private")})

    def create_commit(self, repo_id, operations, **kwargs):
        files = {
            op.path_in_repo: len(
                op.path_or_fileobj if isinstance(op.path_or_fileobj, bytes) else open(op.path_or_fileobj, "rb").read()
            )
            for op in operations
        }
        record({"call": "create_commit", "repo_id": repo_id, "files": files})

    HfApi.create_repo = create_repo
    HfApi.create_commit = create_commit
