"""Shipping a compressed model: verified atomic save, model card, push to the Hub."""

from .card import METHODS, CompressionSummary, render_model_card
from .hub import HubError, push_to_hub
from .save import save_compressed
from .verify import VerificationError, check_checkpoint, check_tokenizer, verify_checkpoint

__all__ = [
    "METHODS", "CompressionSummary", "HubError", "VerificationError", "check_checkpoint", "check_tokenizer", "push_to_hub", "render_model_card",
    "save_compressed", "verify_checkpoint",
]
