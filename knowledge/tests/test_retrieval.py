from __future__ import annotations

import random

from django.db import connection

from knowledge.models import Chunk, Document, KnowledgeBase
from knowledge.retrieval import vector_search
from tenants.rls import tenant_context

DIM = 384


def unit(vector: list[float]) -> list[float]:
    norm = sum(v * v for v in vector) ** 0.5
    return [v / norm for v in vector]


def near(base: list[float], rng: random.Random, spread: float) -> list[float]:
    return unit([b + rng.gauss(0, spread) for b in base])


def add_chunks(tenant, vectors: list[list[float]]) -> None:
    with tenant_context(tenant.pk):
        kb = KnowledgeBase.objects.create(tenant=tenant, name="kb")
        document = Document.objects.create(tenant=tenant, knowledge_base=kb, title="doc")
        Chunk.objects.bulk_create(
            Chunk(tenant=tenant, document=document, ordinal=i, text=f"chunk {i}", embedding=v)
            for i, v in enumerate(vectors)
        )


def test_it_returns_k_results_under_rls_even_when_another_tenant_crowds_the_index(world) -> None:
    rng = random.Random(3)
    query = unit([rng.gauss(0, 1) for _ in range(DIM)])
    # Tenant B owns many chunks right next to the query; tenant A's are further away.
    add_chunks(world.tenant_b, [near(query, rng, 0.02) for _ in range(400)])
    add_chunks(world.tenant_a, [near(query, rng, 0.2) for _ in range(30)])
    with tenant_context(world.tenant_a.pk):
        with connection.cursor() as cursor:
            # Make the planner walk the HNSW index, as it does at scale, instead of reading all of
            # tenant A's rows through the tenant_id index and sorting them (exact, but slow there).
            for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
                cursor.execute(f"SET LOCAL {setting} = off")
            cursor.execute("SET LOCAL hnsw.ef_search = 40")
            cursor.execute("EXPLAIN SELECT id FROM knowledge_chunk ORDER BY embedding <=> %s::vector LIMIT 10",
                           [str(query)])
            assert "chunk_embedding_hnsw" in "\n".join(row[0] for row in cursor.fetchall())
        plain = vector_search(embedding=query, k=10, iterative=False)
        found = vector_search(embedding=query, k=10)
    # Without iterative scans the index's 40 candidates are all B's, and RLS removes them.
    assert len(plain) < 10
    assert len(found) == 10 and {c.tenant_id for c in found} == {world.tenant_a.pk}
    distances = [c.distance for c in found]  # type: ignore[attr-defined]
    assert distances == sorted(distances)
