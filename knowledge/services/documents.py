"""Document writes: uploads (new, new version or unchanged, by content hash), delete and retry.

A stored document is queued for the ingestion pipeline (`knowledge.services.pipeline`) once its row
commits; a file refused before that still gets a failed row with its reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from audit.services import Actor, audit_record
from knowledge import storage
from knowledge.ingest.types import IngestError
from knowledge.models import Chunk, Document, KnowledgeBase, KnowledgeSource
from knowledge.services import KnowledgeInputError
from tenants.rls import tenant_context

# What happened to one uploaded file.
UploadResult = Literal["queued", "new_version", "unchanged", "rejected"]


@dataclass
class UploadOutcome:
    """One uploaded file's document row and what happened to the file."""

    document: Document
    result: UploadResult

    @property
    def message(self) -> str:
        return {
            "queued": "queued for ingestion",
            "new_version": f"new version {self.document.version} queued",
            "unchanged": "unchanged: identical content is already in this knowledge base",
            "rejected": self.document.error,
        }[self.result]


def _upload_pieces(upload: Any) -> Iterable[bytes]:
    if hasattr(upload, "chunks"):
        yield from upload.chunks(1 << 20)
    else:
        while piece := upload.read(1 << 20):
            yield piece


def documents_upload(*, knowledge_base: KnowledgeBase, files: Sequence[Any], uploaded_by: User | None,
                     actor: Actor) -> list[UploadOutcome]:
    """Each file on its own: one bad file is rejected with its reason, and the others go on."""
    return [document_put(knowledge_base=knowledge_base, name=getattr(f, "name", "") or "", pieces=_upload_pieces(f),
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
        return _upload_reject(knowledge_base, name, str(exc), uploaded_by, actor)
    try:
        stored = storage.store(tenant_id, pieces, limit=limit)
    except storage.TooLarge:
        return _upload_reject(knowledge_base, clean_name,
                              f"The file is larger than the {settings.KNOWLEDGE_MAX_FILE_MB} MB limit per file.",
                              uploaded_by, actor)
    try:
        fmt = detect_format(clean_name, stored.head)
    except IngestError as exc:
        storage.delete(stored.name)
        return _upload_reject(knowledge_base, clean_name, str(exc), uploaded_by, actor, size=stored.size)
    try:
        with tenant_context(tenant_id):
            outcome = _document_put_row(knowledge_base, clean_name, stored, fmt, uploaded_by, actor, source)
    except BaseException:
        storage.delete(stored.name)
        raise
    if outcome.result == "unchanged":
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
    result: UploadResult
    if previous is not None:
        old_stored = previous.stored_name
        previous.version += 1
        _reset_for_ingest(previous, stored, fmt, uploaded_by)
        previous.save()
        transaction.on_commit(lambda: storage.delete(old_stored))
        document, result = previous, "new_version"
    else:
        document = Document(tenant_id=knowledge_base.tenant_id, knowledge_base=knowledge_base, source=source,
                            name=name, title=name.rsplit("/", 1)[-1][:300])
        _reset_for_ingest(document, stored, fmt, uploaded_by)
        document.save()
        result = "queued"
    audit_record(tenant_id=knowledge_base.tenant_id, actor=actor, action="document.upload", target_type="document",
                 target_id=document.pk, payload={"name": name, "outcome": result, "format": fmt,
                                                 "bytes": stored.size, "sha256": stored.sha256,
                                                 "version": document.version})
    _enqueue_ingest(document)
    return UploadOutcome(document, result)


def _reset_for_ingest(document: Document, stored: storage.StoredFile, fmt: str, uploaded_by: User | None) -> None:
    document.stored_name, document.format, document.size_bytes = stored.name, fmt, stored.size
    document.content_hash = stored.sha256
    document.status, document.progress, document.error, document.warnings = Document.Status.QUEUED, 0, "", []
    document.timings, document.started_at, document.finished_at = {}, None, None
    document.uploaded_by = uploaded_by


def _upload_reject(knowledge_base: KnowledgeBase, name: str, reason: str, uploaded_by: User | None, actor: Actor,
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
