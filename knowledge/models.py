"""Knowledge bases, who may use them, their sources, documents, and the documents' chunks."""

from __future__ import annotations

from functools import partial

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from pgvector.django import VectorField

from tenants.models import Role, TenantOwned

# Every role may chat with a new knowledge base unless told otherwise. A partial over literals rather
# than a function: migrations serialize it by value, so they carry the roles instead of importing
# this module (a changed role list then shows up as a migration of its own).
default_access_roles: partial[list[str]] = partial(list, tuple(role.value for role in Role))


class KnowledgeBase(TenantOwned):
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    # Chunking: the bundled MiniLM embeds at most 256 word pieces, so that is the default budget.
    chunk_max_tokens = models.PositiveIntegerField(default=256)
    chunk_overlap_tokens = models.PositiveIntegerField(default=32)
    # Who may chat with it: members with one of these roles, plus the users listed in `members`.
    # An empty role list makes the knowledge base private to its listed users.
    access_roles = ArrayField(models.CharField(max_length=20, choices=Role.choices), default=default_access_roles,
                              blank=True)
    # Turns that draw on a sensitive knowledge base (chosen for the conversation, or cited earlier in
    # it) are answered only by the local model: its passages must not leave the installation.
    sensitive = models.BooleanField(default=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="knowledgebase_unique_name")]

    def __str__(self) -> str:
        return self.name


class KnowledgeBaseMember(TenantOwned):
    """A user given access to a knowledge base by name, whatever their role."""

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["knowledge_base", "user"], name="kbmember_unique")]


class KnowledgeSource(TenantOwned):
    """A URL or a server folder whose documents are re-synced on a schedule."""

    class Kind(models.TextChoices):
        URL = "url", "Web page (URL)"
        FOLDER = "folder", "Server folder"

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="sources")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    location = models.CharField(max_length=2000)
    sync_interval_minutes = models.PositiveIntegerField(default=60)
    last_synced_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # A fetched URL's validators, so an unchanged page costs a 304 and no parsing.
    etag = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.kind}: {self.location}"


class Document(TenantOwned):
    class Status(models.TextChoices):
        QUEUED = "queued"
        PARSING = "parsing"
        CHUNKING = "chunking"
        EMBEDDING = "embedding"
        READY = "ready"
        FAILED = "failed"

    IN_PROGRESS = (Status.QUEUED, Status.PARSING, Status.CHUNKING, Status.EMBEDDING)

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="documents")
    source = models.ForeignKey(KnowledgeSource, null=True, blank=True, on_delete=models.CASCADE,
                               related_name="documents")
    title = models.CharField(max_length=300)
    # The uploaded file name (cleaned), the URL, or the path inside a synced folder. It identifies
    # the document across re-uploads: the same name with new content is a new version.
    name = models.CharField(max_length=2000)
    # Where the bytes are kept, under KNOWLEDGE_STORAGE_DIR: always a generated name.
    stored_name = models.CharField(max_length=200, blank=True)
    format = models.CharField(max_length=10, blank=True)
    size_bytes = models.PositiveBigIntegerField(default=0)
    content_hash = models.CharField(max_length=64, blank=True)
    version = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)  # percent
    error = models.TextField(blank=True)
    warnings = models.JSONField(default=list, blank=True)
    chunk_count = models.PositiveIntegerField(default=0)
    # How many chunks the last ingestion had to embed (the rest were unchanged and kept).
    chunks_embedded = models.PositiveIntegerField(default=0)
    timings = models.JSONField(default=dict, blank=True)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["knowledge_base", "name"]), models.Index(fields=["status", "updated_at"])]

    def __str__(self) -> str:
        return self.title

    @property
    def in_progress(self) -> bool:
        return self.status in self.IN_PROGRESS

    @property
    def duration_s(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class Chunk(TenantOwned):
    """A passage of a document, with its embedding and its full-text vector.

    The table is hash-partitioned by tenant (migration 0004, in SQL: Django cannot declare
    partitions). A tenant's query then searches one partition's HNSW graph, shared with a few
    tenants instead of all, so a filtered nearest-neighbour search finds k rows quickly.
    PostgreSQL wants the partition key in the primary key, so the real key is (tenant_id, id);
    Django only needs `id` to be unique, which the identity column guarantees. Nothing points at
    a chunk with a foreign key (citations store ids), which partitioning would not allow.
    """

    id = models.BigAutoField(primary_key=True)
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    # Denormalised from the document so access filters need no join inside the index scan.
    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="+")
    ordinal = models.PositiveIntegerField()
    text = models.TextField()
    heading = models.TextField(blank=True)
    page = models.PositiveIntegerField(null=True, blank=True)
    token_count = models.PositiveIntegerField(default=0)
    content_hash = models.CharField(max_length=64)
    # No fixed dimension: EMBEDDING_MODEL_PATH may hold any model. The HNSW index is built per
    # dimension on `embedding::vector(n)`, restricted to rows of that dimension (knowledge.vector_index).
    embedding = VectorField(null=True)
    embedding_dim = models.PositiveSmallIntegerField(null=True)
    embedding_model = models.CharField(max_length=200, blank=True)
    search_vector = SearchVectorField(null=True)

    def __str__(self) -> str:
        return f"chunk {self.ordinal} of document {self.document_id}"
