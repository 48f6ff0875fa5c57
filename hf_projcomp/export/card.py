"""The model card (README.md with YAML metadata) of a compressed checkpoint, from ``model_cards/``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from transformers import PretrainedConfig

from .._version import __version__
from ..model_ids import hub_id_of, packaged_model_of

TEMPLATE_NAME = "compressed_model.md"
METHODS = {
    "compact": (
        "COMPACT pruning",
        "COMPACT ([arXiv 2509.06836](https://arxiv.org/abs/2509.06836)): rare vocabulary is dropped "
        "(embedding and LM-head rows, and the tokenizer, renumbered densely) and FFN channels are "
        "ranked per layer by activations weighted toward common tokens. Pruning needs no training; "
        "any training after it (distillation from the base) is listed under Data.",
    ),
    "projected-compression": (
        "Projected Compression",
        "Projected Compression ([arXiv 2506.22255](https://arxiv.org/abs/2506.22255)): trainable "
        "projections of the frozen base weights, `W_c = P_out · W · P_in + A`, initialised as a one-hot "
        "selection of the most important dimensions, trained, then merged into this vanilla checkpoint.",
    ),
}
SIZE_FIELDS = ("hidden_size", "intermediate_size", "vocab_size", "num_hidden_layers", "num_attention_heads")


@dataclass
class CompressionSummary:
    """What a model card reports about one compression."""

    method: str  # a key of METHODS
    base_model: str | None
    parameters_before: int
    parameters_after: int
    base_config: dict[str, Any]
    config: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    calibration_data: str | None = None
    calibration_tokens: int | None = None
    training_data: str | None = None
    training_tokens: int | None = None
    eval_data: str | None = None
    bits_per_byte_before: float | None = None
    bits_per_byte_after: float | None = None
    base_weights: str | None = None  # where the base's weights came from, when not its Hub checkpoint
    license: str | None = None  # the base's licence (it carries over to the compressed model), if known

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {tuple(METHODS)}, got {self.method!r}")

    @classmethod
    def from_configs(
        cls,
        method: str,
        base_config: PretrainedConfig,
        config: PretrainedConfig,
        base_parameters: int,
        parameters: int,
        **kwargs: Any,
    ) -> CompressionSummary:
        provenance = _base_provenance(base_config.name_or_path)
        return cls(
            method=method,
            base_model=kwargs.pop("base_model", None) or hub_id_of(base_config.name_or_path),
            parameters_before=base_parameters,
            parameters_after=parameters,
            base_config=base_config.to_dict(),
            config=config.to_dict(),
            **{**provenance, **kwargs},
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _base_provenance(name_or_path: str | None) -> dict[str, str]:
    """``base_weights`` and ``license`` of a base loaded from a local directory: a packaged model's such
    as the demo's (its marker file), else the licence its own model card declares."""
    if not name_or_path or not Path(name_or_path).is_dir():
        return {}
    base = Path(name_or_path)
    packaged = packaged_model_of(base)
    if packaged is not None:
        return {"base_weights": packaged.weights, "license": packaged.license}
    if (base / "README.md").is_file():
        license = ModelCard.load(base / "README.md").data.to_dict().get("license")
        if isinstance(license, str):
            return {"license": license}
    return {}


def template_path(name: str = TEMPLATE_NAME) -> Path:
    """A model card template: ``hf_projcomp/model_cards/`` in an installed wheel (``pyproject.toml`` maps
    the repository's top-level ``model_cards/`` there), that folder itself in a source checkout."""
    installed = resources.files("hf_projcomp") / "model_cards" / name
    if installed.is_file():
        return Path(str(installed))
    source = Path(__file__).resolve().parents[2] / "model_cards" / name
    if not source.is_file():
        raise FileNotFoundError(f"model card template {name} is missing from the hf_projcomp installation")
    return source


def project_url() -> str | None:
    """The project URL ``pyproject.toml`` declares, if any (cards link only to what exists)."""
    try:
        urls = metadata.metadata("hf_projcomp").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        return None
    for entry in urls:
        label, _, url = entry.partition(",")
        if label.strip().lower() in ("homepage", "repository", "source") and url.strip():
            return url.strip()
    return None


def render_model_card(
    summary: CompressionSummary, repo_id: str | None = None, local_name: str | None = None
) -> ModelCard:
    """The card: YAML metadata (base_model, library_name, tags) and a body from the template.

    The usage snippet loads ``repo_id``, or ``local_name`` (the directory's name) until it is pushed:
    :func:`~hf_projcomp.export.push_to_hub` puts the repo id in.
    """
    title, description = METHODS[summary.method]
    tags = ["pruned", summary.method, "hf_projcomp"]
    data = ModelCardData(
        base_model=summary.base_model if summary.base_model and not Path(summary.base_model).exists() else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=tags,
        license=summary.license,
    )
    sizes = [
        (name, summary.base_config.get(name), summary.config.get(name))
        for name in SIZE_FIELDS
        if name in summary.config
    ]
    base_name = summary.base_model or summary.base_config.get("model_type", "model")
    return ModelCard.from_template(
        data,
        template_path=str(template_path()),
        model_name=repo_id.split("/")[-1] if repo_id else f"{Path(base_name).name}-{summary.method}",
        base_model_name=base_name,
        repo_id=repo_id or local_name or "this-model",
        project_url=project_url(),
        version=_version(),
        method_title=title,
        method_description=description,
        architecture=(summary.config.get("architectures") or ["the base class"])[0],
        sizes=sizes,
        **{k: v for k, v in summary.to_dict().items() if k not in ("base_model", "base_config", "config")},
    )


def _version() -> str:
    return __version__
