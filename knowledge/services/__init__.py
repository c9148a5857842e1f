"""Knowledge writes, one module per kind: `knowledge_bases`, `documents` (uploads),
`pipeline` (ingestion), `sources` (URL and folder sources).

The chunk rows themselves are written through `knowledge.chunk_store`, where all raw SQL on the chunk
tables lives. This module holds what every knowledge service shares: the error for bad admin input.
"""

from __future__ import annotations


class KnowledgeInputError(ValueError):
    """Bad input from an admin: shown as is; nothing was changed."""
