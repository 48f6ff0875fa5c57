"""The package version (one definition: hf_projcomp.__version__, model cards)."""

__version__ = "0.2.0"
