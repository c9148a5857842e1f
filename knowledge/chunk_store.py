"""Every raw SQL statement on the chunk tables (`knowledge_chunk` and its partitions).

The ORM cannot write these rows well: the table is hash-partitioned by tenant, its tsvector is
computed by PostgreSQL from two parameters, and batches want one statement each. Nor can it ask
the HNSW index per dimension (knowledge.vector_index) with pgvector's iterative scans. The callers
hold the tenant context; every statement also names the tenant, so partition pruning applies.

Vector search uses the HNSW index of the embedding's dimension (knowledge.vector_index) with
pgvector's iterative scans: an HNSW scan visits a bounded candidate list (ef_search) and the
filters apply afterwards, so without them a shared index could leave fewer than k rows of ours.
`relaxed_order` can return rows slightly out of distance order, so they are sorted again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.backends.utils import CursorWrapper

from knowledge.ingest.types import ChunkDraft
from knowledge.models import Chunk, Document
from knowledge.selectors import embedding_model_id
from knowledge.text import TSVECTOR_SQL, fts_parts, tsquery_parts
from knowledge.vector_index import distance_sql, vector_literal


def chunks_replace(*, document: Document, drafts: Sequence[ChunkDraft]) -> dict[str, int]:
    """Makes the document's chunks equal `drafts`, keeping (and not re-embedding) unchanged ones.

    A chunk is unchanged when its content hash (heading and text) matches one already stored and
    embedded by the current model; only its position is updated. New chunks are written in bulk
    without an embedding, for `document_embed`; chunks no longer in the document are deleted.
    """
    model = embedding_model_id()
    stored: dict[str, list[int]] = {}
    stale: set[int] = set()
    for chunk_id, content_hash, chunk_model in (Chunk.objects.filter(document=document).order_by("ordinal")
                                                .values_list("id", "content_hash", "embedding_model")):
        if chunk_model in (model, ""):  # embedded by this model, or not embedded yet
            stored.setdefault(content_hash, []).append(chunk_id)
        else:
            stale.add(chunk_id)
    keep: list[tuple[int, ChunkDraft]] = []
    new: list[ChunkDraft] = []
    for draft in drafts:
        ids = stored.get(draft.content_hash)
        if ids:
            keep.append((ids.pop(0), draft))
        else:
            new.append(draft)
    stale |= {chunk_id for ids in stored.values() for chunk_id in ids}
    tenant_id, kb_id = document.tenant_id, document.knowledge_base_id
    with connection.cursor() as cursor:
        if stale:
            cursor.execute("DELETE FROM knowledge_chunk WHERE tenant_id = %s AND id = ANY(%s)", [tenant_id, list(stale)])
        if keep:
            cursor.executemany(
                "UPDATE knowledge_chunk SET ordinal = %s, page = %s WHERE tenant_id = %s AND id = %s",
                [(d.ordinal, d.page, tenant_id, chunk_id) for chunk_id, d in keep],
            )
        if new:
            # executemany runs as one pipeline of prepared INSERTs: one round trip per batch, and
            # the tsvector is computed by PostgreSQL from the text (COPY could not call it).
            cursor.executemany(
                "INSERT INTO knowledge_chunk (tenant_id, document_id, knowledge_base_id, ordinal, text, heading, page,"
                " token_count, content_hash, embedding_model, search_vector)"
                f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, '', {TSVECTOR_SQL})",
                [(tenant_id, document.pk, kb_id, d.ordinal, d.text, d.heading, d.page, d.token_count,
                  d.content_hash, *fts_parts(d.embedding_text)) for d in new],
            )
    return {"new": len(new), "kept": len(keep), "removed": len(stale)}

def chunk_embeddings_write(*, tenant_id: int, chunk_ids: Sequence[int], vectors: Sequence[Sequence[float]],
                           model: str) -> None:
    """Stores `vectors[i]` as the embedding of chunk `chunk_ids[i]`, made by `model`."""
    with connection.cursor() as cursor:
        # One statement for the whole batch (the ids and vectors as two parallel arrays)
        # rather than one UPDATE per chunk: PostgreSQL parses, plans and prunes the
        # partitions once. One model made every vector of the batch: one dimension.
        cursor.execute(
            "UPDATE knowledge_chunk AS c SET embedding = v.embedding, embedding_dim = %s, embedding_model = %s"
            " FROM (SELECT unnest(%s::bigint[]) AS id, unnest(%s::text[]::vector[]) AS embedding) AS v"
            " WHERE c.tenant_id = %s AND c.id = v.id",
            [len(vectors[0]), model, list(chunk_ids), [vector_literal(v) for v in vectors], tenant_id],
        )


def _hnsw_scan_configure(cursor: CursorWrapper, ef_search: int) -> None:
    cursor.execute(
        "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), set_config('hnsw.ef_search', %s, true)",
        [str(ef_search)],
    )


def vector_search(*, tenant_id: int, knowledge_base_ids: Sequence[int], embedding: Sequence[float],
                  model: str, k: int = 10, ef_search: int | None = None) -> list[tuple[int, float]]:
    """(chunk id, cosine distance) of the k nearest chunks, nearest first. The caller holds the context."""
    if not knowledge_base_ids:
        return []
    dim = len(embedding)
    with connection.cursor() as cursor:
        _hnsw_scan_configure(cursor, ef_search or settings.KNOWLEDGE_HNSW_EF_SEARCH)
        cursor.execute(
            f"SELECT id, {distance_sql(dim)} AS distance FROM knowledge_chunk"
            " WHERE tenant_id = %s AND embedding_dim = %s AND embedding_model = %s"
            " AND knowledge_base_id = ANY(%s) ORDER BY distance LIMIT %s",
            [vector_literal(embedding), tenant_id, dim, model, list(knowledge_base_ids), k],
        )
        rows = cursor.fetchall()
    return sorted(((int(i), float(d)) for i, d in rows), key=lambda row: row[1])


def text_search(*, tenant_id: int, knowledge_base_ids: Sequence[int], query: str, model: str,
                k: int = 10) -> list[tuple[int, float]]:
    """(chunk id, ts_rank_cd) of the k best full-text matches. Only chunks already embedded by the
    current model count, so both searches see the same, finished passages (and a chunk left over
    from another embedding model never reaches the reranker with a vector it cannot compare)."""
    latin, cjk = tsquery_parts(query)
    terms: list[str] = []
    params: list[Any] = []
    if latin:
        terms.append("to_tsquery('english', %s)")
        params.append(latin)
    if cjk:
        terms.append("to_tsquery('simple', %s)")
        params.append(cjk)
    if not terms or not knowledge_base_ids:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, ts_rank_cd(search_vector, q) AS rank FROM knowledge_chunk, (SELECT {' || '.join(terms)} AS q) AS t"
            " WHERE tenant_id = %s AND knowledge_base_id = ANY(%s) AND embedding_model = %s"
            " AND embedding IS NOT NULL AND search_vector @@ q ORDER BY rank DESC, id LIMIT %s",
            [*params, tenant_id, list(knowledge_base_ids), model, k],
        )
        return [(int(i), float(r)) for i, r in cursor.fetchall()]
