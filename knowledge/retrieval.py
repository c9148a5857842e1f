"""Hybrid retrieval: vector search and full-text search, fused by reciprocal rank, then reranked.

Tenant- and access-aware twice over: the caller's tenant context makes row-level security hide
other tenants' chunks, and every query also names the tenant and the knowledge bases this user
may read (`knowledge.selectors.knowledge_bases_for_member`), so a missing context or a bug in
one layer still returns nothing it should not. The two searches' SQL is in knowledge.chunk_store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from django.conf import settings

from knowledge.chunk_store import text_search, vector_search
from knowledge.models import Chunk

# Reciprocal rank fusion's constant, from Cormack et al. (2009); it damps the top ranks' weight.
RRF_K = 60


@dataclass
class Passage:
    chunk_id: int
    document_id: int
    knowledge_base_id: int
    document_title: str
    ordinal: int
    heading: str
    text: str
    page: int | None
    score: float = 0.0
    vector_rank: int | None = None
    text_rank: int | None = None
    similarity: float | None = None  # cosine similarity to the query, when known
    embedding: list[float] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.document_title} — {self.heading}" if self.heading else self.document_title


def rrf(rankings: Sequence[Sequence[int]]) -> dict[int, float]:
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, chunk_id in enumerate(ranking, start=1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank)
    return scores


def passages_load(chunk_ids: Sequence[int], *, with_embeddings: bool = False) -> dict[int, Passage]:
    fields = ["id", "document_id", "knowledge_base_id", "document__title", "ordinal", "heading", "text", "page"]
    rows = Chunk.objects.filter(pk__in=list(chunk_ids)).values(*fields, *(["embedding"] if with_embeddings else []))
    return {
        row["id"]: Passage(
            chunk_id=row["id"], document_id=row["document_id"], knowledge_base_id=row["knowledge_base_id"],
            document_title=row["document__title"], ordinal=row["ordinal"], heading=row["heading"],
            text=row["text"], page=row["page"],
            embedding=[float(x) for x in row["embedding"]] if with_embeddings and row["embedding"] is not None else None,
        )
        for row in rows
    }


def hybrid_search(*, tenant_id: int, knowledge_base_ids: Sequence[int], query: str, embedding: Sequence[float],
                  model: str, candidates: int = 30, use_text: bool = True) -> list[Passage]:
    """Candidates from both searches, fused by reciprocal rank, best first (not yet reranked)."""
    by_vector = vector_search(tenant_id=tenant_id, knowledge_base_ids=knowledge_base_ids, embedding=embedding,
                              model=model, k=candidates)
    by_text = text_search(tenant_id=tenant_id, knowledge_base_ids=knowledge_base_ids, query=query, model=model,
                          k=candidates) if use_text else []
    vector_ids = [i for i, _ in by_vector]
    text_ids = [i for i, _ in by_text]
    fused = rrf([vector_ids, text_ids])
    passages = passages_load(list(fused), with_embeddings=True)
    distance = dict(by_vector)
    for rank, chunk_id in enumerate(vector_ids, start=1):
        passages[chunk_id].vector_rank = rank
    for rank, chunk_id in enumerate(text_ids, start=1):
        passages[chunk_id].text_rank = rank
    for chunk_id, passage in passages.items():
        passage.score = fused[chunk_id]
        if chunk_id in distance:
            passage.similarity = 1.0 - distance[chunk_id]
    return sorted(passages.values(), key=lambda p: (-p.score, p.chunk_id))


def relevance_gate(passages: list[Passage], margin: float) -> list[Passage]:
    """Drops passages much less similar to the question than the best one.

    A small knowledge base returns its whole content as "top k"; passages far below the best
    only distract a small model and would be shown as sources the answer never used.
    """
    best = max((p.similarity for p in passages if p.similarity is not None), default=None)
    if best is None:
        return passages
    return [p for p in passages if p.similarity is None or p.similarity >= best - margin]


def retrieve(*, tenant_id: int, knowledge_base_ids: Sequence[int], query: str, embedding: Sequence[float],
             model: str, k: int | None = None, reranker: object | None = None) -> list[Passage]:
    """The passages for one question: hybrid candidates, reranked, gated. The caller holds the
    tenant context and has already reduced `knowledge_base_ids` to those the user may read."""
    from knowledge.rerank import default_reranker

    k = k or settings.KNOWLEDGE_TOP_K
    candidates = hybrid_search(tenant_id=tenant_id, knowledge_base_ids=knowledge_base_ids, query=query,
                               embedding=embedding, model=model, candidates=settings.KNOWLEDGE_CANDIDATES)
    chosen = (reranker or default_reranker()).rerank(query, embedding, candidates, k)  # type: ignore[attr-defined]
    return relevance_gate(chosen, settings.KNOWLEDGE_RELEVANCE_MARGIN)
