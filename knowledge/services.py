"""Knowledge writes: knowledge bases, uploads, and the ingestion pipeline's steps.

The pipeline, one document at a time, each step audited:
  upload (web) -> `document_ingest` on `ingest`: parse in a limited child process, chunk, keep the
  chunks whose content did not change -> `document_embed` on `gpu`: embed the new chunks in batches
  -> ready. A failure at any step fails that document alone, with its reason stored and shown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone

from audit.services import SYSTEM, Actor, audit_record
from knowledge import storage
from knowledge.ingest.types import ChunkDraft, IngestError, embedding_text
from knowledge.models import Chunk, Document, KnowledgeBase, KnowledgeBaseMember, KnowledgeSource
from knowledge.selectors import embedding_model_id
from knowledge.text import TSVECTOR_SQL, fts_parts
from knowledge.vector_index import vector_literal
from tenants.models import Membership, Role, Tenant
from tenants.rls import tenant_context

logger = logging.getLogger(__name__)

# Progress (percent) at the start of each step; embedding fills the rest, batch by batch.
PROGRESS: dict[str, int] = {Document.Status.PARSING: 5, Document.Status.CHUNKING: 15, Document.Status.EMBEDDING: 20}


class KnowledgeInputError(ValueError):
    """Bad input from an admin: shown as is; nothing was changed."""


# --- knowledge bases ----------------------------------------------------------------------------

def _clean_roles(roles: Iterable[str]) -> list[str]:
    valid = {r.value for r in Role}
    chosen = sorted(set(roles))
    unknown = [r for r in chosen if r not in valid]
    if unknown:
        raise KnowledgeInputError(f"Unknown role: {', '.join(unknown)}.")
    return chosen


def _check_chunking(max_tokens: int, overlap: int) -> None:
    if not 32 <= max_tokens <= 2048:
        raise KnowledgeInputError("Chunk size must be between 32 and 2048 tokens.")
    if not 0 <= overlap < max_tokens // 2:
        raise KnowledgeInputError("Overlap must be at least 0 and less than half the chunk size.")


def _set_members(knowledge_base: KnowledgeBase, user_ids: Sequence[int]) -> None:
    valid = set(Membership.objects.filter(tenant_id=knowledge_base.tenant_id, user_id__in=list(user_ids))
                .values_list("user_id", flat=True))
    if set(user_ids) - valid:
        raise KnowledgeInputError("Only members of this organisation can be given access.")
    KnowledgeBaseMember.objects.filter(knowledge_base=knowledge_base).exclude(user_id__in=valid).delete()
    existing = set(KnowledgeBaseMember.objects.filter(knowledge_base=knowledge_base).values_list("user_id", flat=True))
    KnowledgeBaseMember.objects.bulk_create(
        KnowledgeBaseMember(tenant_id=knowledge_base.tenant_id, knowledge_base=knowledge_base, user_id=uid)
        for uid in sorted(valid - existing)
    )


def _validated(tenant_id: int, name: str, roles: Iterable[str], chunk_max_tokens: int, chunk_overlap_tokens: int,
               *, exclude_pk: int | None = None) -> tuple[str, list[str]]:
    """The cleaned name and roles of a knowledge base being created or changed, or the reason not."""
    name = " ".join(name.split())[:200]
    if not name:
        raise KnowledgeInputError("A knowledge base needs a name.")
    _check_chunking(chunk_max_tokens, chunk_overlap_tokens)
    cleaned_roles = _clean_roles(roles)
    same_name = KnowledgeBase.objects.filter(tenant_id=tenant_id, name=name)
    if exclude_pk is not None:
        same_name = same_name.exclude(pk=exclude_pk)
    if same_name.exists():
        raise KnowledgeInputError(f"A knowledge base named “{name}” already exists.")
    return name, cleaned_roles


@transaction.atomic
def knowledge_base_create(*, tenant: Tenant, name: str, description: str = "", access_roles: Iterable[str] | None = None,
                          member_ids: Sequence[int] = (), chunk_max_tokens: int = 256, chunk_overlap_tokens: int = 32,
                          sensitive: bool = False, created_by: User | None = None, actor: Actor) -> KnowledgeBase:
    name, roles = _validated(tenant.pk, name, access_roles if access_roles is not None else [r.value for r in Role],
                             chunk_max_tokens, chunk_overlap_tokens)
    knowledge_base = KnowledgeBase.objects.create(
        tenant=tenant, name=name, description=description.strip(), access_roles=roles,
        chunk_max_tokens=chunk_max_tokens, chunk_overlap_tokens=chunk_overlap_tokens, sensitive=sensitive,
        created_by=created_by,
    )
    _set_members(knowledge_base, member_ids)
    audit_record(tenant_id=tenant.pk, actor=actor, action="knowledge_base.create", target_type="knowledge_base",
                 target_id=knowledge_base.pk, payload={"name": name, "access_roles": roles,
                                                       "member_ids": sorted(member_ids), "sensitive": sensitive})
    return knowledge_base


@transaction.atomic
def knowledge_base_update(*, knowledge_base: KnowledgeBase, name: str, description: str, access_roles: Iterable[str],
                          member_ids: Sequence[int], chunk_max_tokens: int, chunk_overlap_tokens: int,
                          sensitive: bool | None = None, actor: Actor) -> KnowledgeBase:
    """Changes a knowledge base's settings; `sensitive` None leaves that flag as it is."""
    name, roles = _validated(knowledge_base.tenant_id, name, access_roles, chunk_max_tokens, chunk_overlap_tokens,
                             exclude_pk=knowledge_base.pk)
    if sensitive is not None:
        knowledge_base_set_sensitive(knowledge_base=knowledge_base, sensitive=sensitive, actor=actor)
    knowledge_base.name, knowledge_base.description, knowledge_base.access_roles = name, description.strip(), roles
    knowledge_base.chunk_max_tokens, knowledge_base.chunk_overlap_tokens = chunk_max_tokens, chunk_overlap_tokens
    knowledge_base.save(update_fields=["name", "description", "access_roles", "chunk_max_tokens",
                                       "chunk_overlap_tokens", "updated_at"])
    _set_members(knowledge_base, member_ids)
    audit_record(tenant_id=knowledge_base.tenant_id, actor=actor, action="knowledge_base.update",
                 target_type="knowledge_base", target_id=knowledge_base.pk,
                 payload={"name": name, "access_roles": roles, "member_ids": sorted(member_ids),
                          "chunk_max_tokens": chunk_max_tokens, "chunk_overlap_tokens": chunk_overlap_tokens})
    return knowledge_base


@transaction.atomic
def knowledge_base_set_sensitive(*, knowledge_base: KnowledgeBase, sensitive: bool, actor: Actor) -> KnowledgeBase:
    """Marks a knowledge base sensitive: from the next turn on, a conversation that uses it (or
    cited it earlier) is answered only by the local model. Its own event, so compliance can find
    every time data was allowed to leave the installation."""
    if knowledge_base.sensitive == sensitive:
        return knowledge_base
    knowledge_base.sensitive = sensitive
    knowledge_base.save(update_fields=["sensitive", "updated_at"])
    audit_record(tenant_id=knowledge_base.tenant_id, actor=actor, action="knowledge_base.sensitivity_change",
                 target_type="knowledge_base", target_id=knowledge_base.pk,
                 payload={"name": knowledge_base.name, "sensitive": sensitive})
    return knowledge_base


@transaction.atomic
def knowledge_base_delete(*, knowledge_base: KnowledgeBase, actor: Actor) -> None:
    stored = list(Document.objects.filter(knowledge_base=knowledge_base).values_list("stored_name", flat=True))
    audit_record(tenant_id=knowledge_base.tenant_id, actor=actor, action="knowledge_base.delete",
                 target_type="knowledge_base", target_id=knowledge_base.pk,
                 payload={"name": knowledge_base.name, "documents": len(stored)})
    Chunk.objects.filter(knowledge_base=knowledge_base).delete()
    knowledge_base.delete()

    def remove_files() -> None:
        for name in stored:
            storage.delete(name)

    transaction.on_commit(remove_files)


def demo_knowledge_seed(*, tenant: Tenant, uploaded_by: User | None = None) -> KnowledgeBase | None:
    """The demo tenant's "Demo handbook", so a first chat can cite something. Idempotent."""
    from pathlib import Path

    with tenant_context(tenant.pk):
        if KnowledgeBase.objects.filter(tenant=tenant, name="Demo handbook").exists():
            return None
        knowledge_base = knowledge_base_create(
            tenant=tenant, name="Demo handbook", description="Working hours, leave, travel and IT rules.",
            created_by=uploaded_by, actor=SYSTEM)
    handbook = Path(__file__).resolve().parent / "demo" / "handbook.md"
    document_put(knowledge_base=knowledge_base, name="handbook.md", pieces=[handbook.read_bytes()],
                 uploaded_by=uploaded_by, actor=SYSTEM)
    return knowledge_base


# --- documents: upload ----------------------------------------------------------------------------

@dataclass
class UploadOutcome:
    document: Document
    outcome: str  # "queued", "new_version", "unchanged" or "rejected"

    @property
    def message(self) -> str:
        return {
            "queued": "queued for ingestion",
            "new_version": f"new version {self.document.version} queued",
            "unchanged": "unchanged: identical content is already in this knowledge base",
            "rejected": self.document.error,
        }[self.outcome]


def _pieces(upload: Any) -> Iterable[bytes]:
    if hasattr(upload, "chunks"):
        yield from upload.chunks(1 << 20)
    else:
        while piece := upload.read(1 << 20):
            yield piece


def documents_upload(*, knowledge_base: KnowledgeBase, files: Sequence[Any], uploaded_by: User | None,
                     actor: Actor) -> list[UploadOutcome]:
    """Each file on its own: one bad file is rejected with its reason, and the others go on."""
    return [document_put(knowledge_base=knowledge_base, name=getattr(f, "name", "") or "", pieces=_pieces(f),
                         uploaded_by=uploaded_by, actor=actor) for f in files]


def document_put(*, knowledge_base: KnowledgeBase, name: str, pieces: Iterable[bytes], uploaded_by: User | None,
                 actor: Actor, source: KnowledgeSource | None = None) -> UploadOutcome:
    """Stores one file's bytes as a document of `knowledge_base`: new, a new version, or unchanged."""
    from knowledge.ingest.formats import detect_format, safe_display_name

    tenant_id = knowledge_base.tenant_id
    limit = settings.KNOWLEDGE_MAX_FILE_MB * 1024 * 1024
    try:
        clean_name = name if source is not None else safe_display_name(name)
    except IngestError as exc:
        return _reject(knowledge_base, name, str(exc), uploaded_by, actor)
    try:
        stored = storage.store(tenant_id, pieces, limit=limit)
    except storage.TooLarge:
        return _reject(knowledge_base, clean_name,
                       f"The file is larger than the {settings.KNOWLEDGE_MAX_FILE_MB} MB limit per file.",
                       uploaded_by, actor)
    try:
        fmt = detect_format(clean_name, stored.head)
    except IngestError as exc:
        storage.delete(stored.name)
        return _reject(knowledge_base, clean_name, str(exc), uploaded_by, actor, size=stored.size)
    try:
        with tenant_context(tenant_id):
            outcome = _document_put_row(knowledge_base, clean_name, stored, fmt, uploaded_by, actor, source)
    except BaseException:
        storage.delete(stored.name)
        raise
    if outcome.outcome == "unchanged":
        storage.delete(stored.name)
    return outcome


def _document_put_row(knowledge_base: KnowledgeBase, name: str, stored: storage.StoredFile, fmt: str,
                      uploaded_by: User | None, actor: Actor, source: KnowledgeSource | None) -> UploadOutcome:
    documents = Document.objects.select_for_update().filter(knowledge_base=knowledge_base)
    same = documents.filter(content_hash=stored.sha256).exclude(status=Document.Status.FAILED).first()
    if same is not None and (same.name == name or source is None):
        audit_record(tenant_id=knowledge_base.tenant_id, actor=actor, action="document.upload",
                     target_type="document", target_id=same.pk,
                     payload={"name": name, "outcome": "unchanged", "sha256": stored.sha256})
        return UploadOutcome(same, "unchanged")
    previous = documents.filter(name=name, source=source).order_by("-id").first()
    if previous is not None:
        old_stored = previous.stored_name
        previous.version += 1
        _reset_for_ingest(previous, stored, fmt, uploaded_by)
        previous.save()
        transaction.on_commit(lambda: storage.delete(old_stored))
        document, outcome = previous, "new_version"
    else:
        document = Document(tenant_id=knowledge_base.tenant_id, knowledge_base=knowledge_base, source=source,
                            name=name, title=name.rsplit("/", 1)[-1][:300])
        _reset_for_ingest(document, stored, fmt, uploaded_by)
        document.save()
        outcome = "queued"
    audit_record(tenant_id=knowledge_base.tenant_id, actor=actor, action="document.upload", target_type="document",
                 target_id=document.pk, payload={"name": name, "outcome": outcome, "format": fmt,
                                                 "bytes": stored.size, "sha256": stored.sha256,
                                                 "version": document.version})
    _enqueue_ingest(document)
    return UploadOutcome(document, outcome)


def _reset_for_ingest(document: Document, stored: storage.StoredFile, fmt: str, uploaded_by: User | None) -> None:
    document.stored_name, document.format, document.size_bytes = stored.name, fmt, stored.size
    document.content_hash = stored.sha256
    document.status, document.progress, document.error, document.warnings = Document.Status.QUEUED, 0, "", []
    document.timings, document.started_at, document.finished_at = {}, None, None
    document.uploaded_by = uploaded_by


def _reject(knowledge_base: KnowledgeBase, name: str, reason: str, uploaded_by: User | None, actor: Actor,
            size: int = 0) -> UploadOutcome:
    """A file refused before ingestion still gets a row, so the admin sees which file and why."""
    shown = name or "(unnamed file)"
    with tenant_context(knowledge_base.tenant_id):
        document = Document.objects.create(
            tenant_id=knowledge_base.tenant_id, knowledge_base=knowledge_base, name=shown[:2000],
            title=shown.rsplit("/", 1)[-1][:300] or "(unnamed file)", size_bytes=size,
            status=Document.Status.FAILED, error=reason, uploaded_by=uploaded_by, finished_at=timezone.now(),
        )
        audit_record(tenant_id=knowledge_base.tenant_id, actor=actor, action="document.reject", target_type="document",
                     target_id=document.pk, outcome="failure", payload={"name": shown, "reason": reason})
    return UploadOutcome(document, "rejected")


def _enqueue_ingest(document: Document) -> None:
    from knowledge.tasks import ingest_document

    tenant_id, document_id = document.tenant_id, document.pk
    transaction.on_commit(lambda: ingest_document.delay(tenant_id=tenant_id, document_id=document_id))


@transaction.atomic
def document_delete(*, document: Document, actor: Actor) -> None:
    stored = document.stored_name
    audit_record(tenant_id=document.tenant_id, actor=actor, action="document.delete", target_type="document",
                 target_id=document.pk, payload={"name": document.name, "chunks": document.chunk_count})
    Chunk.objects.filter(document=document).delete()
    document.delete()
    transaction.on_commit(lambda: storage.delete(stored))


@transaction.atomic
def document_retry(*, document: Document, actor: Actor) -> Document:
    """Runs a failed document's ingestion again (say, after raising a limit)."""
    if document.status != Document.Status.FAILED or not document.stored_name:
        raise KnowledgeInputError("Only a failed document whose file is kept can be retried.")
    document.status, document.progress, document.error = Document.Status.QUEUED, 0, ""
    document.started_at = document.finished_at = None
    document.save(update_fields=["status", "progress", "error", "started_at", "finished_at", "updated_at"])
    audit_record(tenant_id=document.tenant_id, actor=actor, action="document.retry", target_type="document",
                 target_id=document.pk)
    _enqueue_ingest(document)
    return document


# --- the pipeline -------------------------------------------------------------------------------

def _step(tenant_id: int, document_id: int, status: str, *, expect: Sequence[str]) -> Document | None:
    """Moves the document to `status` if it is still in one of `expect`; None if it moved on or is gone."""
    with tenant_context(tenant_id):
        document = Document.objects.select_for_update().select_related("knowledge_base").filter(pk=document_id).first()
        if document is None or document.status not in expect:
            return None
        document.status = status
        document.progress = PROGRESS.get(status, document.progress)
        fields = ["status", "progress", "updated_at"]
        if status == Document.Status.PARSING:
            document.started_at, document.error, document.timings = timezone.now(), "", {}
            fields += ["started_at", "error", "timings"]
        document.save(update_fields=fields)
        return document


def _fail(document: Document, reason: str, step: str) -> None:
    with tenant_context(document.tenant_id):
        updated = Document.objects.filter(pk=document.pk).exclude(status=Document.Status.FAILED).update(
            status=Document.Status.FAILED, error=reason, finished_at=timezone.now(), updated_at=timezone.now())
        if updated:
            audit_record(tenant_id=document.tenant_id, actor=SYSTEM, action="document.fail", target_type="document",
                         target_id=document.pk, outcome="failure", payload={"step": step, "reason": reason})


def document_ingest(*, tenant_id: int, document_id: int) -> None:
    """Parses and chunks one document (queue `ingest`), then hands the new chunks to `document_embed`."""
    from knowledge.ingest.chunking import chunk_document, token_counter
    from knowledge.ingest.sandbox import parse_in_child

    document = _step(tenant_id, document_id, Document.Status.PARSING,
                     expect=[Document.Status.QUEUED, Document.Status.PARSING, Document.Status.CHUNKING])
    if document is None:
        return
    t0 = time.monotonic()
    try:
        parsed = parse_in_child(str(storage.path_of(document.stored_name)), document.format,
                                memory_mb=settings.KNOWLEDGE_PARSE_MEMORY_MB, cpu_s=settings.KNOWLEDGE_PARSE_CPU_S,
                                timeout_s=settings.KNOWLEDGE_PARSE_TIMEOUT_S)
    except IngestError as exc:
        _fail(document, str(exc), "parse")
        return
    except FileNotFoundError:
        _fail(document, "The stored file is missing; upload it again.", "parse")
        return
    parse_ms = (time.monotonic() - t0) * 1000
    if _step(tenant_id, document_id, Document.Status.CHUNKING, expect=[Document.Status.PARSING]) is None:
        return
    t1 = time.monotonic()
    kb = document.knowledge_base
    # The knowledge base's budget is what the embedding model sees, whose limit (MiniLM: 256)
    # includes its two special tokens; the chunker counts text tokens only.
    drafts = chunk_document(parsed, max_tokens=kb.chunk_max_tokens - 2, overlap_tokens=kb.chunk_overlap_tokens,
                            counter=token_counter(settings.EMBEDDING_MODEL_PATH or None))
    if not drafts:
        _fail(document, "No text could be extracted from this file.", "chunk")
        return
    with tenant_context(tenant_id):
        if not Document.objects.filter(pk=document_id, status=Document.Status.CHUNKING).exists():
            return
        counts = chunks_replace(document=document, drafts=drafts)
        chunk_ms = (time.monotonic() - t1) * 1000
        title = parsed.title.strip()[:300]
        Document.objects.filter(pk=document_id).update(
            status=Document.Status.EMBEDDING, progress=PROGRESS[Document.Status.EMBEDDING],
            chunk_count=len(drafts), chunks_embedded=counts["new"], warnings=parsed.warnings,
            title=title or document.title,
            timings={"parse_ms": round(parse_ms, 1), "chunk_ms": round(chunk_ms, 1)}, updated_at=timezone.now(),
        )
        audit_record(tenant_id=tenant_id, actor=SYSTEM, action="document.chunk", target_type="document",
                     target_id=document_id, payload={"chunks": len(drafts), **counts, "blocks": len(parsed.blocks),
                                                     "version": document.version})
        transaction.on_commit(lambda: _enqueue_embed(tenant_id, document_id))


def _enqueue_embed(tenant_id: int, document_id: int) -> None:
    from knowledge.tasks import embed_document

    embed_document.delay(tenant_id=tenant_id, document_id=document_id)


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


def document_embed(*, tenant_id: int, document_id: int) -> None:
    """Embeds the document's chunks that have no vector yet (queue `gpu`), batch by batch, then marks it ready."""
    from inference import runtime

    with tenant_context(tenant_id):
        document = Document.objects.filter(pk=document_id, status=Document.Status.EMBEDDING).first()
    if document is None:
        return
    t0 = time.monotonic()
    model = embedding_model_id()
    total = max(document.chunks_embedded, 1)
    done = 0
    # The encoder's own batch. On a CPU, 16 encodes 256-token chunks 7-18% faster than
    # sentence-transformers' default 32 even with no padding to speak of (smaller activations stay
    # in cache; short chunks lose nothing), and a document's few dozen chunks, sorted by length
    # within the call, leave gaps that a smaller batch pads less (bench/ingest_speed.py, MiniLM,
    # 2 cores). A GPU wants big batches: the default stays there.
    encode_batch = 16 if settings.MODEL_DEVICE == "cpu" else 32
    try:
        embedder = runtime.get_embedder()
        while True:
            with tenant_context(tenant_id):
                if not Document.objects.filter(pk=document_id, status=Document.Status.EMBEDDING).exists():
                    return  # deleted, or a new version restarted the pipeline
                batch = list(Chunk.objects.filter(document_id=document_id, embedding=None).order_by("ordinal")
                             .values_list("id", "heading", "text")[: settings.KNOWLEDGE_EMBED_BATCH])
            if not batch:
                break
            vectors = embedder.embed([embedding_text(h, t) for _, h, t in batch], batch_size=encode_batch)
            done += len(batch)
            with tenant_context(tenant_id), connection.cursor() as cursor:
                # One statement for the whole batch (the ids and vectors as two parallel arrays)
                # rather than one UPDATE per chunk: PostgreSQL parses, plans and prunes the
                # partitions once. One model made every vector of the batch: one dimension.
                cursor.execute(
                    "UPDATE knowledge_chunk AS c SET embedding = v.embedding, embedding_dim = %s, embedding_model = %s"
                    " FROM (SELECT unnest(%s::bigint[]) AS id, unnest(%s::text[]::vector[]) AS embedding) AS v"
                    " WHERE c.tenant_id = %s AND c.id = v.id",
                    [len(vectors[0]), model, [chunk_id for chunk_id, _, _ in batch],
                     [vector_literal(v) for v in vectors], tenant_id],
                )
                Document.objects.filter(pk=document_id).update(
                    progress=min(99, PROGRESS[Document.Status.EMBEDDING] + int(79 * done / total)),
                    updated_at=timezone.now())
    except Exception as exc:  # noqa: BLE001 - a model failure fails this document, not the worker
        logger.exception("embedding document %s failed", document_id)
        _fail(document, f"Embedding failed: {type(exc).__name__}: {exc}", "embed")
        return
    embed_ms = (time.monotonic() - t0) * 1000
    with tenant_context(tenant_id):
        document = Document.objects.select_for_update().filter(pk=document_id, status=Document.Status.EMBEDDING).first()
        if document is None:
            return
        now = timezone.now()
        document.status, document.progress, document.finished_at = Document.Status.READY, 100, now
        document.timings = {**document.timings, "embed_ms": round(embed_ms, 1),
                            "total_ms": round((now - (document.started_at or now)).total_seconds() * 1000, 1)}
        document.save(update_fields=["status", "progress", "finished_at", "timings", "updated_at"])
        audit_record(tenant_id=tenant_id, actor=SYSTEM, action="document.ready", target_type="document",
                     target_id=document_id, payload={"chunks": document.chunk_count, "embedded": done,
                                                     "model": model, "timings": document.timings})


def documents_sweep_stale() -> int:
    """Fails documents stuck in a step (their worker died) so they show a reason and can be retried."""
    cutoff = timezone.now() - timedelta(seconds=settings.KNOWLEDGE_STALE_S)
    count = 0
    for tenant_id in Tenant.objects.values_list("id", flat=True):
        with tenant_context(tenant_id):
            # Queued documents may wait behind a long batch; only a step that stopped moving is stale.
            stale = list(Document.objects.filter(status__in=Document.IN_PROGRESS[1:], updated_at__lt=cutoff))
        for document in stale:
            _fail(document, "Ingestion stopped without finishing (a worker was restarted). Retry it.", "sweep")
            count += 1
    return count

