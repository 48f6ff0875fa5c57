"""The machine line every benchmark result states: cores, GPU or none, torch, architecture."""

from __future__ import annotations

import os
import platform

import torch


def describe(device: str = "cpu") -> str:
    """e.g. ``2 CPU cores, no GPU, torch 2.13.0+cpu, x86_64``; with ``device="cuda"``, the GPU's name."""
    gpu = torch.cuda.get_device_name() if device == "cuda" else "no GPU"
    return f"{os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}, {platform.machine()}"
