"""URL and folder sources: re-syncs find changes by content, and touch only what changed."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from audit.services import SYSTEM
from knowledge.models import Chunk, Document, KnowledgeSource
from knowledge.services import KnowledgeInputError, sources
from knowledge.services.knowledge_bases import knowledge_base_create
from knowledge.services.pipeline import document_embed, document_ingest
from tenants.rls import tenant_context


def ingest_all(source: KnowledgeSource) -> None:
    with tenant_context(source.tenant_id):
        queued = list(Document.objects.filter(source=source, status="queued"))
    for document in queued:
        document_ingest(tenant_id=document.tenant_id, document_id=document.pk)
        document_embed(tenant_id=document.tenant_id, document_id=document.pk)


def chunk_ids(source: KnowledgeSource) -> dict[str, set[int]]:
    with tenant_context(source.tenant_id):
        found: dict[str, set[int]] = {}
        for name, chunk_id in Chunk.objects.filter(document__source=source).values_list("document__name", "id"):
            found.setdefault(name, set()).add(chunk_id)
        return found


@pytest.fixture
def folder(settings, tmp_path: Path) -> Path:
    root = tmp_path / "shared"
    (root / "policies").mkdir(parents=True)
    settings.KNOWLEDGE_FOLDER_ROOTS = [root]
    return root


def make_source(world, kind: str, location: str) -> KnowledgeSource:
    with tenant_context(world.tenant_a.pk):
        kb = knowledge_base_create(tenant=world.tenant_a, name="Shared drive", actor=SYSTEM)
        return sources.source_create(knowledge_base=kb, kind=kind, location=location, actor=SYSTEM)


def test_it_syncs_a_folder_and_then_touches_only_what_changed(world, folder: Path) -> None:
    (folder / "policies" / "leave.md").write_text("# Leave\n\nSixteen weeks.\n\n## Sick leave\n\nTen days.")
    (folder / "travel.txt").write_text("Book through the travel desk.")
    (folder / "notes.bin").write_bytes(b"\x00\x01")  # not a supported format: ignored
    source = make_source(world, "folder", str(folder))
    counts = sources.source_sync(tenant_id=source.tenant_id, source_id=source.pk)
    assert counts["queued"] == 2
    ingest_all(source)
    before = chunk_ids(source)
    assert set(before) == {"policies/leave.md", "travel.txt"}

    (folder / "policies" / "leave.md").write_text("# Leave\n\nTwenty weeks.\n\n## Sick leave\n\nTen days.")
    (folder / "travel.txt").unlink()
    counts = sources.source_sync(tenant_id=source.tenant_id, source_id=source.pk)
    assert counts == {"queued": 0, "new_version": 1, "unchanged": 0, "rejected": 0, "removed": 1}
    ingest_all(source)
    after = chunk_ids(source)
    assert set(after) == {"policies/leave.md"}
    # One section changed: one new chunk; the unchanged section kept its chunk (and its vector).
    assert len(after["policies/leave.md"] - before["policies/leave.md"]) == 1
    assert len(after["policies/leave.md"] & before["policies/leave.md"]) == 1
    with tenant_context(world.tenant_a.pk):
        document = Document.objects.get(source=source)
    assert document.version == 2 and document.chunks_embedded == 1

    counts = sources.source_sync(tenant_id=source.tenant_id, source_id=source.pk)
    assert counts["unchanged"] == 1 and counts["new_version"] == 0


def test_it_refuses_a_folder_outside_the_allowed_roots(world, folder: Path, tmp_path: Path) -> None:
    with pytest.raises(KnowledgeInputError, match="must be inside"):
        make_source(world, "folder", str(folder / ".." / ".."))
    with pytest.raises(KnowledgeInputError, match="must be inside"):
        make_source(world, "folder", "/etc")


def test_it_does_not_follow_links_out_of_the_folder(world, folder: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("root password")
    (folder / "link.txt").symlink_to(secret)
    (folder / "ok.txt").write_text("fine")
    source = make_source(world, "folder", str(folder))
    sources.source_sync(tenant_id=source.tenant_id, source_id=source.pk)
    with tenant_context(world.tenant_a.pk):
        assert list(Document.objects.filter(source=source).values_list("name", flat=True)) == ["ok.txt"]


class Site(http.server.BaseHTTPRequestHandler):
    body = b"<html><head><title>Canteen</title></head><body><h1>Canteen</h1><p>Opens at eight.</p></body></html>"
    etag = '"v1"'
    hits: list[str] = []

    def do_GET(self) -> None:  # the http.server API names it
        Site.hits.append(self.headers.get("If-None-Match", ""))
        if self.headers.get("If-None-Match") == Site.etag:
            self.send_response(304)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("ETag", Site.etag)
        self.end_headers()
        self.wfile.write(Site.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def site(settings) -> Iterator[str]:
    settings.KNOWLEDGE_URL_ALLOW_PRIVATE = True
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Site.hits = []
    yield f"http://127.0.0.1:{server.server_address[1]}/canteen"
    server.shutdown()


def test_it_syncs_a_url_and_skips_an_unchanged_page_by_etag(world, site: str) -> None:
    source = make_source(world, "url", site)
    assert sources.source_sync(tenant_id=source.tenant_id, source_id=source.pk)["queued"] == 1
    ingest_all(source)
    with tenant_context(world.tenant_a.pk):
        document = Document.objects.get(source=source)
    assert document.status == "ready" and document.title == "Canteen"
    assert sources.source_sync(tenant_id=source.tenant_id, source_id=source.pk)["unchanged"] == 1
    assert Site.hits[-1] == '"v1"'  # asked conditionally, answered 304
    Site.body, Site.etag = Site.body.replace(b"eight", b"nine"), '"v2"'
    assert sources.source_sync(tenant_id=source.tenant_id, source_id=source.pk)["new_version"] == 1


def test_it_refuses_private_addresses_unless_allowed(world, settings) -> None:
    settings.KNOWLEDGE_URL_ALLOW_PRIVATE = False
    with pytest.raises(KnowledgeInputError, match="private address"):
        make_source(world, "url", "http://127.0.0.1:9/")
    with pytest.raises(KnowledgeInputError, match="http"):
        make_source(world, "url", "file:///etc/passwd")


def test_it_queues_only_sources_that_are_due(world, folder: Path) -> None:
    source = make_source(world, "folder", str(folder))
    with tenant_context(world.tenant_a.pk):
        KnowledgeSource.objects.filter(pk=source.pk).update(last_synced_at=timezone.now())
    assert sources.sources_sync_due() == 0
    with tenant_context(world.tenant_a.pk):
        KnowledgeSource.objects.filter(pk=source.pk).update(last_synced_at=timezone.now() - timedelta(minutes=61))
    assert sources.sources_sync_due() == 1


def test_it_records_a_failed_sync_with_its_reason(world, folder: Path) -> None:
    from audit.models import AuditEvent

    source = make_source(world, "folder", str(folder))
    folder.rename(folder.with_name("moved"))
    sources.source_sync(tenant_id=source.tenant_id, source_id=source.pk)
    with tenant_context(world.tenant_a.pk):
        source.refresh_from_db()
        event = AuditEvent.objects.filter(action="source.sync").latest("seq")
    assert "No such folder" in source.last_error
    assert event.outcome == "failure" and "No such folder" in event.payload["error"]
