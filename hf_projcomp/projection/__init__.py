"""Projection layers (the W_c math and its parameters) and the projected model wrapper."""

from .layer import Projection, project_weight
from .model import ProjCompModel, unwrap

__all__ = ["ProjCompModel", "Projection", "project_weight", "unwrap"]
