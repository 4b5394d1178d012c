"""The model zoo and its exported artifacts.

``servingbench.models.runtime`` (which loads artifacts inside servers) is imported explicitly, not from here.
Importing this package does not import torch.
"""

from servingbench.models.artifacts import ModelArtifacts, build_artifacts, default_cache_dir, load_artifacts
from servingbench.models.zoo import ModelSpec, TensorSpec, get_model, list_models

__all__ = [
    "ModelArtifacts", "ModelSpec", "TensorSpec", "build_artifacts", "default_cache_dir", "get_model",
    "list_models", "load_artifacts",
]
