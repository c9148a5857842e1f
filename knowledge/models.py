from __future__ import annotations

from django.db import models
from pgvector.django import HnswIndex, VectorField

from tenants.models import TenantOwned


class KnowledgeBase(TenantOwned):
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Document(TenantOwned):
    class Status(models.TextChoices):
        QUEUED = "queued"
        PARSING = "parsing"
        CHUNKING = "chunking"
        EMBEDDING = "embedding"
        READY = "ready"
        FAILED = "failed"

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="documents")
    title = models.CharField(max_length=300)
    content_hash = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.title


class Chunk(TenantOwned):
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    ordinal = models.PositiveIntegerField()
    text = models.TextField()
    # 384 = the bundled all-MiniLM-L6-v2. HNSW needs a fixed dimension.
    embedding = VectorField(dimensions=384, null=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["document", "ordinal"], name="chunk_unique_ordinal")]
        indexes = [
            HnswIndex(
                name="chunk_embedding_hnsw",
                fields=["embedding"],
                m=16,
                ef_construction=64,
                opclasses=["vector_cosine_ops"],
            )
        ]
