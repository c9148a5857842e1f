"""Vector search that keeps returning k results under row-level security.

An HNSW scan visits a bounded candidate list (ef_search) and row-level security filters it
afterwards, so in a shared index another tenant's nearby chunks can leave fewer than k of ours.
pgvector 0.8's iterative index scans keep scanning until k rows pass the filter. With
`relaxed_order` the rows can come back slightly out of distance order, so we sort them again.
"""

from __future__ import annotations

from django.db import connection
from pgvector.django import CosineDistance

from knowledge.models import Chunk


def vector_search(*, embedding: list[float], k: int = 8, iterative: bool = True) -> list[Chunk]:
    """The k chunks nearest to `embedding` in the current tenant (the caller holds the context)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('hnsw.iterative_scan', %s, true)", ["relaxed_order" if iterative else "off"])
    chunks = list(
        Chunk.objects.exclude(embedding=None)
        .annotate(distance=CosineDistance("embedding", embedding))
        .order_by("distance")[:k]
    )
    return sorted(chunks, key=lambda chunk: chunk.distance)  # type: ignore[attr-defined]
