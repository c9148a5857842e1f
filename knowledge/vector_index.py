"""The HNSW index per embedding dimension, and the SQL that can use it.

`knowledge_chunk.embedding` has no fixed dimension, because EMBEDDING_MODEL_PATH may name any
model (MiniLM: 384, bge-m3: 1024). pgvector can only index a fixed dimension, so each dimension
gets a partial expression index on `embedding::vector(n)` over the rows of that dimension, and
queries repeat exactly that expression and predicate so the planner picks the index.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db import connection

# Hash partitions of knowledge_chunk by tenant (migration 0004). Each holds roughly 1/16 of
# the tenants, so a tenant-filtered HNSW scan discards few candidates.
PARTITIONS = 16
DEFAULT_DIMENSION = 384


def index_name(dimension: int) -> str:
    return f"knowledge_chunk_hnsw_{int(dimension)}"


def create_index_sql(dimension: int) -> str:
    n = int(dimension)
    return (
        f"CREATE INDEX IF NOT EXISTS {index_name(n)} ON knowledge_chunk "
        f"USING hnsw ((embedding::vector({n})) vector_cosine_ops) WITH (m = 16, ef_construction = 64) "
        f"WHERE embedding_dim = {n}"
    )


def distance_sql(dimension: int) -> str:
    """Cosine distance to the query vector (one %s parameter), in the indexed expression's form."""
    n = int(dimension)
    return f"(embedding::vector({n})) <=> %s::vector({n})"


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form of `vector`, for a `%s::vector` parameter."""
    return "[" + ",".join(f"{float(x):.7g}" for x in vector) + "]"


def ensure_index(dimension: int) -> bool:
    """Creates the index for `dimension` if it is missing. Needs the owner role (see `migrate`)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_class WHERE relname = %s", [index_name(dimension)])
        if cursor.fetchone():
            return False
        cursor.execute(create_index_sql(dimension))
        return True
