"""Shipping a compressed model: verified atomic save, model card, push to the Hub."""

from .card import METHODS, CompressionSummary, render_model_card
from .hub import push_to_hub
from .save import VerificationError, save_compressed, verify_checkpoint

__all__ = [
    "METHODS", "CompressionSummary", "VerificationError", "push_to_hub", "render_model_card", "save_compressed",
    "verify_checkpoint",
]
