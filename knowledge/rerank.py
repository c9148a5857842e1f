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
    """Half cosine similarity, half a rank fusion that tells rank 1 from rank 5; MMR optional, off.

    relevance = w * cos(query, passage) + (1 - w) * fused / max(fused),
    fused = 1 / (c + vector rank) + 1 / (c + text rank), with w = 0.5 and c = 5.

    Chosen with bench/retrieval_quality.py (11 company documents in English and Chinese, 141
    questions): the best of 25 variants on a tuning half of 54 questions, then checked on the
    held-out 54 and on 33 questions written after the choice. MRR@10, plain fusion -> this:
    held-out 0.882 -> 0.904, fresh 0.837 -> 0.880 (on these 87 untuned questions together +0.030,
    95% bootstrap interval +0.008 to +0.057); hit@5 over all 141 questions 0.950 -> 0.986. With
    128-token chunks the gain is smaller and less certain (+0.026, interval -0.005 to +0.061).
    The reranker of the first version (cosine 0.6 + fusion at c = 60, MMR 0.15) was no better
    than plain fusion (0.851 against 0.847 on all questions).
    - Fusion's constant (retrieval.RRF_K = 60) was set for ranked lists 1,000 deep. Over 30
      candidates per list it barely separates rank 1 (1/61) from rank 30 (1/90), so the fused
      score mostly says "found by both searches or by one". With c = 5 the ranks count again;
      that alone lifted MRR@10 in both languages (0.847 -> 0.869).
    - The cosine, known for every candidate (filled in here for those found by text alone), then
      separates passages the fusion ranks alike and lifts a passage the embedding is sure of
      that full-text search missed. Cosine alone is worse than fusion: the bundled MiniLM is
      English-only, ranks Chinese passages poorly, and blurs codes and numbers.
    - Tried and left out, as they did not help: a bonus for identifiers (BCN-4012, RB-017) found
      verbatim (full-text search already ranks those first), weighting the text list up or down,
      min-max scaling the cosine, and adding the similarity of the neighbouring chunks of the
      same document as context: the chunker cuts at headings, so a neighbour is usually another
      topic, and mixing it in left MRR equal or lower. MMR (`diversity`) changed MRR and hit@5
      by less than the noise: chunks overlap by a few sentences only, so there are few
      near-duplicates to skip. It stays available for corpora that have them.
    """

    name = "embedding-fusion"

    def __init__(self, *, similarity_weight: float = 0.5, rank_constant: int = 5,
                 diversity: float = 0.0) -> None:
        self.similarity_weight = similarity_weight
        self.rank_constant = rank_constant
        self.diversity = diversity

    def _fused(self, passages: list[Passage]) -> dict[int, float]:
        """The fusion of the ranks the hybrid search recorded; the caller's score when there are none."""
        if not any(p.vector_rank or p.text_rank for p in passages):
            return {p.chunk_id: p.score for p in passages}
        c = self.rank_constant
        return {p.chunk_id: (1 / (c + p.vector_rank) if p.vector_rank else 0.0)
                + (1 / (c + p.text_rank) if p.text_rank else 0.0) for p in passages}

    def rerank(self, query: str, query_embedding: Sequence[float], passages: list[Passage], k: int) -> list[Passage]:
        if not passages:
            return []
        for passage in passages:
            # A chunk still embedded by an earlier model (full-text search does not filter by
            # model) may have another dimension: its cosine is unknown, not an error.
            if passage.similarity is None and passage.embedding is not None \
                    and len(passage.embedding) == len(query_embedding):
                passage.similarity = _dot(query_embedding, passage.embedding)
        fused = self._fused(passages)
        top_fused = max(fused.values()) or 1.0
        w = self.similarity_weight
        relevance = {p.chunk_id: w * (p.similarity or 0.0) + (1 - w) * fused[p.chunk_id] / top_fused
                     for p in passages}
        pool = sorted(passages, key=lambda p: (-relevance[p.chunk_id], p.chunk_id))
        if self.diversity <= 0:
            chosen = pool[:k]
        else:
            # Maximal marginal relevance: each pick's relevance minus its likeness to the closest
            # passage already chosen (kept per candidate, updated once per pick).
            chosen = []
            redundancy: dict[int, float] = {}
            while pool and len(chosen) < k:
                best = max(pool, key=lambda p: relevance[p.chunk_id]
                           - self.diversity * redundancy.get(p.chunk_id, 0.0))
                pool.remove(best)
                chosen.append(best)
                if best.embedding is not None:
                    for p in pool:
                        if p.embedding is not None and len(p.embedding) == len(best.embedding):
                            seen = _dot(p.embedding, best.embedding)
                            redundancy[p.chunk_id] = max(redundancy.get(p.chunk_id, seen), seen)
        for passage in chosen:
            passage.score = relevance[passage.chunk_id]
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
