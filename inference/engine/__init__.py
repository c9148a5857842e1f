"""Framework-free inference engine: model loading, batched generation, streaming, embeddings.

Importing this package must stay cheap (daphne and Django code import it for names only), so
the public names resolve lazily and torch/transformers load only when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # `import X as X`: the explicit re-export form, so mypy sees what __getattr__ provides.
    from .embeddings import CrossEncoderScorer as CrossEncoderScorer
    from .embeddings import Embedder as Embedder
    from .embeddings import default_embedding_dir as default_embedding_dir
    from .embeddings import embedding_dimensions as embedding_dimensions
    from .engine import Engine as Engine
    from .models import ModelNotFoundError as ModelNotFoundError
    from .models import default_model_dir as default_model_dir
    from .models import load_model as load_model
    from .models import resolve_model_path as resolve_model_path
    from .request import Delta as Delta
    from .request import EngineError as EngineError
    from .request import RequestHandle as RequestHandle
    from .request import SamplingParams as SamplingParams

# name -> submodule; none of these submodules import torch at module level either.
_EXPORTS = {
    "Delta": "request",
    "EngineError": "request",
    "RequestHandle": "request",
    "SamplingParams": "request",
    "Engine": "engine",
    "Embedder": "embeddings",
    "CrossEncoderScorer": "embeddings",
    "default_embedding_dir": "embeddings",
    "embedding_dimensions": "embeddings",
    "ModelNotFoundError": "models",
    "default_model_dir": "models",
    "load_model": "models",
    "resolve_model_path": "models",
}

__all__ = [
    "CrossEncoderScorer",
    "Delta",
    "Embedder",
    "Engine",
    "EngineError",
    "ModelNotFoundError",
    "RequestHandle",
    "SamplingParams",
    "default_embedding_dir",
    "default_model_dir",
    "embedding_dimensions",
    "load_model",
    "resolve_model_path",
]


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
