"""URL and server-folder sources, re-synced on a schedule (beat looks for due ones every 5 minutes).

Changes are found by content hash, as for uploads: an unchanged file or page is a no-op, a changed
one becomes a new version that re-embeds only its changed chunks, and a file gone from its folder
is deleted with its chunks. A URL is asked with If-None-Match / If-Modified-Since first, so an
unchanged page costs a 304 and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import SYSTEM, Actor, audit_record
from knowledge.ingest.formats import FORMATS as EXTENSIONS
from knowledge.models import Document, KnowledgeBase, KnowledgeSource
from knowledge.services import KnowledgeInputError, fetch
from knowledge.services.documents import document_delete, document_put
from tenants.models import Tenant
from tenants.rls import tenant_context

logger = logging.getLogger(__name__)

CONTENT_TYPES = {"text/html": ".html", "application/xhtml+xml": ".html", "application/pdf": ".pdf",
                 "text/plain": ".txt", "text/markdown": ".md", "text/csv": ".csv"}


class SourceError(KnowledgeInputError):
    pass


def _allowed_folder(location: str) -> Path:
    roots = [r.resolve() for r in settings.KNOWLEDGE_FOLDER_ROOTS]
    if not roots:
        raise SourceError("Folder sources are turned off on this server (KNOWLEDGE_FOLDER_ROOTS is empty).")
    path = Path(location).expanduser().resolve()
    if not any(path == r or r in path.parents for r in roots):
        raise SourceError(f"The folder must be inside one of: {', '.join(str(r) for r in roots)}.")
    if not path.is_dir():
        raise SourceError(f"No such folder on the server: {path}.")
    return path


def _check_url(location: str) -> str:
    # Server-side request forgery: a URL typed in the browser must not reach the server's own
    # network (metadata services, databases) unless the operator allows intranet sources. Checked
    # here for a clear error at once, and again at every fetch (the address may have changed).
    try:
        return str(fetch.check_url(location).url)
    except fetch.FetchRefused as exc:
        raise SourceError(str(exc)) from None


@transaction.atomic
def source_create(*, knowledge_base: KnowledgeBase, kind: str, location: str, sync_interval_minutes: int = 60,
                  actor: Actor) -> KnowledgeSource:
    if kind == KnowledgeSource.Kind.FOLDER:
        location = str(_allowed_folder(location))
    elif kind == KnowledgeSource.Kind.URL:
        location = _check_url(location)
    else:
        raise SourceError("Choose a URL or a server folder.")
    if not 5 <= sync_interval_minutes <= 7 * 24 * 60:
        raise SourceError("The sync interval must be between 5 minutes and 7 days.")
    source = KnowledgeSource.objects.create(tenant_id=knowledge_base.tenant_id, knowledge_base=knowledge_base,
                                            kind=kind, location=location,
                                            sync_interval_minutes=sync_interval_minutes)
    audit_record(tenant_id=knowledge_base.tenant_id, actor=actor, action="source.create", target_type="source",
                 target_id=source.pk, payload={"kind": kind, "location": location,
                                               "interval_minutes": sync_interval_minutes})
    tenant_id, source_id = source.tenant_id, source.pk
    transaction.on_commit(lambda: _enqueue_sync(tenant_id, source_id))
    return source


@transaction.atomic
def source_delete(*, source: KnowledgeSource, actor: Actor) -> None:
    audit_record(tenant_id=source.tenant_id, actor=actor, action="source.delete", target_type="source",
                 target_id=source.pk, payload={"kind": source.kind, "location": source.location})
    for document in Document.objects.filter(source=source):
        document_delete(document=document, actor=actor)
    source.delete()


def source_sync_request(*, source: KnowledgeSource) -> None:
    """"Sync now" from the page: queued like a scheduled sync, which audits what it finds."""
    tenant_id, source_id = source.tenant_id, source.pk
    transaction.on_commit(lambda: _enqueue_sync(tenant_id, source_id))


def _enqueue_sync(tenant_id: int, source_id: int) -> None:
    from knowledge.tasks import sync_source

    sync_source.delay(tenant_id=tenant_id, source_id=source_id)


def sources_sync_due() -> int:
    """Queues every source whose interval has passed. Runs on beat."""
    now = timezone.now()
    count = 0
    for tenant_id in Tenant.objects.values_list("id", flat=True):
        with tenant_context(tenant_id):
            for source in KnowledgeSource.objects.all():
                due = source.last_synced_at is None or (
                    now - source.last_synced_at >= timedelta(minutes=source.sync_interval_minutes))
                if due:
                    _enqueue_sync(tenant_id, source.pk)
                    count += 1
    return count


def source_sync(*, tenant_id: int, source_id: int) -> dict[str, int]:
    """Brings a source's documents in line with what is there now."""
    with tenant_context(tenant_id):
        source = KnowledgeSource.objects.select_related("knowledge_base").filter(pk=source_id).first()
    if source is None:
        return {}
    counts = {"queued": 0, "new_version": 0, "unchanged": 0, "rejected": 0, "removed": 0}
    error = ""
    try:
        if source.kind == KnowledgeSource.Kind.FOLDER:
            _sync_folder(source, counts)
        else:
            _sync_url(source, counts)
    except (SourceError, OSError) as exc:
        error = str(exc)
        logger.warning("source %s failed to sync: %s", source_id, error)
    with tenant_context(tenant_id):
        KnowledgeSource.objects.filter(pk=source_id).update(last_synced_at=timezone.now(), last_error=error,
                                                            etag=source.etag)
        audit_record(tenant_id=tenant_id, actor=SYSTEM, action="source.sync", target_type="source",
                     target_id=source_id, outcome="failure" if error else "success",
                     payload={**counts, **({"error": error} if error else {})})
    return counts


def _source_document_put(source: KnowledgeSource, name: str, pieces: Iterator[bytes],
                         counts: dict[str, int]) -> None:
    outcome = document_put(knowledge_base=source.knowledge_base, name=name, pieces=pieces,
                           uploaded_by=None, actor=SYSTEM, source=source)
    counts[outcome.result] += 1


def _file_pieces(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while piece := handle.read(1 << 20):
            yield piece


def _sync_folder(source: KnowledgeSource, counts: dict[str, int]) -> None:
    root = _allowed_folder(source.location)
    seen: set[str] = set()
    for path in sorted(root.rglob("*")):
        # Links could lead outside the allowed folder; only regular files inside it are read.
        if path.is_symlink() or not path.is_file() or path.suffix.lower() not in EXTENSIONS:
            continue
        if path.name.startswith("."):
            continue
        name = path.relative_to(root).as_posix()
        seen.add(name)
        _source_document_put(source, name, _file_pieces(path), counts)
    with tenant_context(source.tenant_id):
        gone = list(Document.objects.filter(source=source).exclude(name__in=seen))
    for document in gone:
        with tenant_context(source.tenant_id):
            document_delete(document=document, actor=SYSTEM)
        counts["removed"] += 1


def _sync_url(source: KnowledgeSource, counts: dict[str, int]) -> None:
    url = source.location
    headers = {"User-Agent": "DeepSeek-Web-sync/1"}
    with tenant_context(source.tenant_id):
        has_ready = Document.objects.filter(source=source, status=Document.Status.READY).exists()
    if source.etag and has_ready:
        headers["If-None-Match"] = source.etag
    try:
        with fetch.fetch(url, headers) as fetched:
            response = fetched.response
            if response.status_code == 304:
                counts["unchanged"] += 1
                return
            if response.status_code >= 400:
                raise SourceError(f"The server answered {response.status_code} {response.reason_phrase}.")
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            suffix = CONTENT_TYPES.get(content_type) or Path(fetched.url.path).suffix.lower()
            if suffix not in EXTENSIONS:
                raise SourceError(f"Unsupported content type {content_type}.")
            source.etag = response.headers.get("ETag", "")[:500]
            # The document's name is the URL; the extension tells the parser what the bytes are.
            name = url if url.lower().endswith(suffix) else f"{url}#{suffix}"
            _source_document_put(source, name, response.iter_bytes(1 << 20), counts)
    except fetch.FetchRefused as exc:
        raise SourceError(str(exc)) from None
    except httpx.HTTPError as exc:
        raise SourceError(f"Could not fetch the page: {exc}.") from None
