"""Shipping a compressed model: verified atomic save, model card, push to the Hub, GGUF for llama.cpp."""

from .card import METHODS, CompressionSummary, render_model_card
from .gguf import GGUFExportError, save_gguf
from .hub import HubError, push_to_hub
from .save import save_compressed
from .verify import VerificationError, check_checkpoint, check_tokenizer, verify_checkpoint

__all__ = [
    "METHODS",
    "CompressionSummary",
    "GGUFExportError",
    "HubError",
    "VerificationError",
    "check_checkpoint",
    "check_tokenizer",
    "push_to_hub",
    "render_model_card",
    "save_compressed",
    "save_gguf",
    "verify_checkpoint",
]
