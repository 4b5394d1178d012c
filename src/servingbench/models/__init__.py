"""The model zoo and its exported artifacts (``runtime`` is imported explicitly by servers)."""

from servingbench.models.artifacts import ModelArtifacts, build_artifacts, default_cache_dir, load_artifacts
from servingbench.models.zoo import ModelSpec, TensorSpec, get_model, list_models

__all__ = [
    "ModelArtifacts", "ModelSpec", "TensorSpec", "build_artifacts", "default_cache_dir", "get_model",
    "list_models", "load_artifacts",
]
