"""Framework-free inference engine: model loading, continuous batching, streaming, embeddings.

Importing this package must stay cheap (daphne and Django code import it for names only), so
the public names resolve lazily and torch/transformers load only when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .embeddings import CrossEncoderScorer, Embedder, default_embedding_dir, embedding_dimensions
    from .engine import Delta, Engine, EngineError, RequestHandle, SamplingParams
    from .models import ModelNotFoundError, default_model_dir, load_model, resolve_model_path

# name -> submodule; none of these submodules import torch at module level either.
_EXPORTS = {
    "Delta": "engine",
    "Engine": "engine",
    "EngineError": "engine",
    "RequestHandle": "engine",
    "SamplingParams": "engine",
    "Embedder": "embeddings",
    "CrossEncoderScorer": "embeddings",
    "default_embedding_dir": "embeddings",
    "embedding_dimensions": "embeddings",
    "ModelNotFoundError": "models",
    "default_model_dir": "models",
    "load_model": "models",
    "resolve_model_path": "models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """PEP 562 lazy attribute: import the submodule on first access."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return __all__
