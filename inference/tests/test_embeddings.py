"""The bundled MiniLM embedder: 384 dimensions, unit vectors, meaningful similarity."""

from __future__ import annotations

import math
from typing import Any

import pytest

from inference.engine import Embedder


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load()


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_it_has_384_dimensions(embedder: Embedder) -> None:
    vectors = embedder.embed(["hello world"])
    assert embedder.dimension == 384
    assert len(vectors) == 1 and len(vectors[0]) == 384


def test_it_returns_normalized_vectors(embedder: Embedder) -> None:
    for vector in embedder.embed(["The cat sat on the mat.", "Quarterly revenue grew 12%."]):
        assert math.isclose(math.sqrt(_dot(vector, vector)), 1.0, abs_tol=1e-4)


def test_it_places_similar_sentences_closer(embedder: Embedder) -> None:
    a, b, c = embedder.embed(
        [
            "How do I reset my password?",
            "I forgot my password and need to change it.",
            "The annual company picnic is in July.",
        ]
    )
    assert _dot(a, b) > _dot(a, c) + 0.2


def test_it_embeds_an_empty_list(embedder: Embedder) -> None:
    assert embedder.embed([]) == []


def test_it_raises_for_a_missing_folder(tmp_path: Any) -> None:
    from inference.engine import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        Embedder.load(str(tmp_path / "missing"))
