"""Reranking the fused candidates: a cross-encoder when one is configured, else our own.

No cross-encoder ships as a package we can install offline, so KNOWLEDGE_RERANKER_PATH accepts
one from a local folder (any sentence-transformers CrossEncoder, e.g. bge-reranker-base), and
the default is `EmbeddingReranker`, measured against plain fusion by bench/retrieval_quality.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from knowledge.retrieval import Passage


class Reranker(Protocol):
    name: str

    def rerank(self, query: str, query_embedding: Sequence[float], passages: list[Passage], k: int) -> list[Passage]:
        ...


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


class EmbeddingReranker:
    """Relevance from the query-passage cosine and the fused rank together, then MMR for diversity.

    Cosine similarity is the finer relevance signal once candidates are in hand (fusion only sees
    ranks), while the fused score keeps exact-term matches (names, codes, numbers) that small
    embedding models blur. Maximal marginal relevance then skips a passage that mostly repeats
    one already chosen, such as the overlapping neighbour of a chunk, so k passages cover more.
    """

    name = "embedding-mmr"

    def __init__(self, *, similarity_weight: float = 0.6, diversity: float = 0.15) -> None:
        self.similarity_weight = similarity_weight
        self.diversity = diversity

    def rerank(self, query: str, query_embedding: Sequence[float], passages: list[Passage], k: int) -> list[Passage]:
        if not passages:
            return []
        for passage in passages:
            if passage.similarity is None and passage.embedding is not None:
                passage.similarity = _dot(query_embedding, passage.embedding)
        top_fused = max(p.score for p in passages) or 1.0
        relevance = {
            p.chunk_id: self.similarity_weight * (p.similarity or 0.0)
            + (1 - self.similarity_weight) * (p.score / top_fused)
            for p in passages
        }
        chosen: list[Passage] = []
        pool = sorted(passages, key=lambda p: (-relevance[p.chunk_id], p.chunk_id))
        while pool and len(chosen) < k:
            def mmr(p: Passage) -> float:
                if not chosen or p.embedding is None:
                    return relevance[p.chunk_id]
                redundancy = max((_dot(p.embedding, c.embedding) for c in chosen if c.embedding is not None), default=0.0)
                return relevance[p.chunk_id] - self.diversity * redundancy

            best = max(pool, key=mmr)
            pool.remove(best)
            best.score = relevance[best.chunk_id]
            chosen.append(best)
        return chosen


class NoReranker:
    name = "none"

    def rerank(self, query: str, query_embedding: Sequence[float], passages: list[Passage], k: int) -> list[Passage]:
        return passages[:k]


class CrossEncoderReranker:
    """A cross-encoder from KNOWLEDGE_RERANKER_PATH, run on the GPU worker (see inference.runtime)."""

    def __init__(self, scorer: object, name: str) -> None:
        self.scorer = scorer
        self.name = name

    def rerank(self, query: str, query_embedding: Sequence[float], passages: list[Passage], k: int) -> list[Passage]:
        if not passages:
            return []
        scores = self.scorer.score(query, [p.text for p in passages])  # type: ignore[attr-defined]
        for passage, score in zip(passages, scores, strict=True):
            passage.score = float(score)
        return sorted(passages, key=lambda p: (-p.score, p.chunk_id))[:k]


def default_reranker() -> Reranker:
    """The cross-encoder of KNOWLEDGE_RERANKER_PATH when set (loaded once per GPU worker), else ours."""
    from django.conf import settings

    if settings.KNOWLEDGE_RERANKER_PATH:
        from inference import runtime

        return CrossEncoderReranker(runtime.get_reranker(), name=f"cross-encoder:{settings.KNOWLEDGE_RERANKER_PATH}")
    return EmbeddingReranker()
