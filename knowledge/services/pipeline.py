"""The ingestion pipeline's steps, one document at a time, each step audited.

  upload (`knowledge.services.documents`) -> `document_ingest` on `ingest`: parse in a limited child
  process, chunk, keep the chunks whose content did not change -> `document_embed` on `gpu`: embed the
  new chunks in batches -> ready. A failure at any step fails that document alone, with its reason
  stored and shown; `documents_sweep_stale` fails the ones whose worker died.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import SYSTEM, audit_record
from knowledge import storage
from knowledge.chunk_store import chunk_embeddings_write, chunks_replace
from knowledge.ingest.types import IngestError, embedding_text
from knowledge.models import Chunk, Document
from knowledge.selectors import embedding_model_id
from tenants.models import Tenant
from tenants.rls import tenant_context

logger = logging.getLogger(__name__)

PROGRESS: dict[str, int] = {Document.Status.PARSING: 5, Document.Status.CHUNKING: 15, Document.Status.EMBEDDING: 20}


def _document_advance(tenant_id: int, document_id: int, status: str, *, expect: Sequence[str]) -> Document | None:
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


def _document_fail(document: Document, reason: str, step: str) -> None:
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

    document = _document_advance(tenant_id, document_id, Document.Status.PARSING,
                                 expect=[Document.Status.QUEUED, Document.Status.PARSING, Document.Status.CHUNKING])
    if document is None:
        return
    t0 = time.monotonic()
    try:
        parsed = parse_in_child(str(storage.path_of(document.stored_name)), document.format,
                                memory_mb=settings.KNOWLEDGE_PARSE_MEMORY_MB, cpu_s=settings.KNOWLEDGE_PARSE_CPU_S,
                                timeout_s=settings.KNOWLEDGE_PARSE_TIMEOUT_S)
    except IngestError as exc:
        _document_fail(document, str(exc), "parse")
        return
    except FileNotFoundError:
        _document_fail(document, "The stored file is missing; upload it again.", "parse")
        return
    parse_ms = (time.monotonic() - t0) * 1000
    if _document_advance(tenant_id, document_id, Document.Status.CHUNKING, expect=[Document.Status.PARSING]) is None:
        return
    t1 = time.monotonic()
    kb = document.knowledge_base
    # The knowledge base's budget is what the embedding model sees, whose limit (MiniLM: 256)
    # includes its two special tokens; the chunker counts text tokens only.
    drafts = chunk_document(parsed, max_tokens=kb.chunk_max_tokens - 2, overlap_tokens=kb.chunk_overlap_tokens,
                            counter=token_counter(settings.EMBEDDING_MODEL_PATH or None))
    if not drafts:
        _document_fail(document, "No text could be extracted from this file.", "chunk")
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
            with tenant_context(tenant_id):
                chunk_embeddings_write(tenant_id=tenant_id, chunk_ids=[chunk_id for chunk_id, _, _ in batch],
                                       vectors=vectors, model=model)
                Document.objects.filter(pk=document_id).update(
                    progress=min(99, PROGRESS[Document.Status.EMBEDDING] + int(79 * done / total)),
                    updated_at=timezone.now())
    except Exception as exc:  # a model failure fails this document, not the worker
        logger.exception("embedding document %s failed", document_id)
        _document_fail(document, f"Embedding failed: {type(exc).__name__}: {exc}", "embed")
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
            _document_fail(document, "Ingestion stopped without finishing (a worker was restarted). Retry it.", "sweep")
            count += 1
    return count
