"""The ingestion pipeline on the real database: upload, parse in the child, chunk, embed, re-sync."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from audit.services import SYSTEM
from knowledge import storage
from knowledge.models import Chunk, Document, KnowledgeBase
from knowledge.services.documents import UploadOutcome, document_delete, documents_upload
from knowledge.services.knowledge_bases import demo_knowledge_seed, knowledge_base_create
from knowledge.services.pipeline import document_embed, document_ingest, documents_sweep_stale
from knowledge.tests import samples
from tenants.rls import tenant_context

HANDBOOK = """# Handbook

## Parental leave

Parents get sixteen weeks of paid parental leave, to be taken within the first year.

## Travel

Book flights through the travel desk at least two weeks ahead. Economy class for flights under six hours.

## Security

Report a lost laptop to the service desk within one hour, by phone on extension 4455.
"""


@pytest.fixture(autouse=True)
def _storage(settings, tmp_path: Path) -> Path:
    storage_dir = tmp_path / "storage"
    settings.KNOWLEDGE_STORAGE_DIR = storage_dir
    return storage_dir


def kb_of(world, name: str = "Handbook", tenant=None, **kwargs) -> KnowledgeBase:
    tenant = tenant or world.tenant_a
    with tenant_context(tenant.pk):
        return knowledge_base_create(tenant=tenant, name=name, actor=SYSTEM, **kwargs)


def upload(kb: KnowledgeBase, files: dict[str, bytes]) -> list[UploadOutcome]:
    return documents_upload(
        knowledge_base=kb, files=[SimpleUploadedFile(name, data) for name, data in files.items()],
        uploaded_by=None, actor=SYSTEM)


def run_pipeline(document: Document) -> Document:
    document_ingest(tenant_id=document.tenant_id, document_id=document.pk)
    document_embed(tenant_id=document.tenant_id, document_id=document.pk)
    with tenant_context(document.tenant_id):
        return Document.objects.get(pk=document.pk)


def chunks_of(document: Document) -> list[Chunk]:
    with tenant_context(document.tenant_id):
        return list(Chunk.objects.filter(document_id=document.pk).order_by("ordinal"))


def test_it_ingests_a_markdown_file_into_embedded_searchable_chunks(world) -> None:
    kb = kb_of(world)
    [outcome] = upload(kb, {"handbook.md": HANDBOOK.encode()})
    assert outcome.result == "queued" and outcome.document.status == "queued"
    document = run_pipeline(outcome.document)
    assert document.status == "ready" and document.progress == 100 and document.error == ""
    chunks = chunks_of(document)
    assert document.chunk_count == len(chunks) >= 3
    assert all(c.embedding is not None and c.embedding_dim == 384 and c.search_vector for c in chunks)
    assert {"Handbook > Parental leave", "Handbook > Travel"} <= {c.heading for c in chunks}
    assert set(document.timings) >= {"parse_ms", "chunk_ms", "embed_ms", "total_ms"}
    assert document.duration_s is not None


def test_it_treats_an_identical_reupload_as_a_no_op(world) -> None:
    kb = kb_of(world)
    [first] = upload(kb, {"handbook.md": HANDBOOK.encode()})
    run_pipeline(first.document)
    [again] = upload(kb, {"copy-of-handbook.md": HANDBOOK.encode()})
    assert again.result == "unchanged" and again.document.pk == first.document.pk
    with tenant_context(world.tenant_a.pk):
        assert Document.objects.filter(knowledge_base=kb).count() == 1
    # Only the first upload's file is kept.
    assert len([p for p in storage.root().rglob("*") if p.is_file()]) == 1


def test_it_re_embeds_only_the_chunks_that_changed(world) -> None:
    kb = kb_of(world)
    [first] = upload(kb, {"handbook.md": HANDBOOK.encode()})
    before = {c.heading: c for c in chunks_of(run_pipeline(first.document))}
    changed = HANDBOOK.replace("sixteen weeks", "twenty weeks")
    [second] = upload(kb, {"handbook.md": changed.encode()})
    assert second.result == "new_version" and second.document.pk == first.document.pk
    document = run_pipeline(second.document)
    after = {c.heading: c for c in chunks_of(document)}
    assert document.version == 2 and document.status == "ready"
    assert document.chunks_embedded == 1
    assert after["Handbook > Parental leave"].pk != before["Handbook > Parental leave"].pk
    assert "twenty weeks" in after["Handbook > Parental leave"].text
    for heading in ("Handbook > Travel", "Handbook > Security"):
        assert after[heading].pk == before[heading].pk  # kept, vector and all
        kept, original = after[heading].embedding, before[heading].embedding
        assert kept is not None and original is not None and list(kept) == list(original)


def test_it_deletes_a_documents_chunks_and_file_with_it(world) -> None:
    kb = kb_of(world)
    [outcome] = upload(kb, {"handbook.md": HANDBOOK.encode()})
    document = run_pipeline(outcome.document)
    stored = storage.path_of(document.stored_name)
    with tenant_context(world.tenant_a.pk):
        document_delete(document=document, actor=SYSTEM)
        assert not Chunk.objects.filter(document_id=document.pk).exists()
    # The file goes when the transaction commits; the test's transaction never does, so run it.
    storage.delete(document.stored_name)
    assert not stored.exists()


def test_it_fails_bad_files_alone_and_stores_each_reason(world, tmp_path: Path) -> None:
    kb = kb_of(world)
    bad = {
        "corrupt.pdf": samples.write_corrupt_pdf(tmp_path).read_bytes(),
        "photo.pdf": samples.write_png_named_pdf(tmp_path).read_bytes(),
        "empty.txt": b"",
        "bomb.docx": samples.write_zip_bomb_docx(tmp_path).read_bytes(),
        "../../etc/passwd.txt": b"root:x:0:0",
    }
    outcomes = upload(kb, {"handbook.md": HANDBOOK.encode(), **bad})
    for outcome in outcomes:
        if outcome.document.status == "queued":
            run_pipeline(outcome.document)
    with tenant_context(world.tenant_a.pk):
        documents = {d.name: d for d in Document.objects.filter(knowledge_base=kb)}
    # The other files did not stop the good one; a `../` name lost its folder parts and is harmless.
    assert documents["handbook.md"].status == "ready"
    assert documents["passwd.txt"].status == "ready"
    failed = {name: d.error for name, d in documents.items() if d.status == "failed"}
    assert set(failed) == {"corrupt.pdf", "photo.pdf", "empty.txt", "bomb.docx"}
    assert all(failed.values())
    assert "empty" in failed["empty.txt"].lower()
    # Nothing was written outside storage, and stored files only have generated names.
    names = [p.relative_to(storage.root()).as_posix() for p in storage.root().rglob("*") if p.is_file()]
    assert all(n.split("/")[0] == str(world.tenant_a.pk) and len(n.split("/")[1]) == 32 for n in names)


def test_it_refuses_a_file_over_the_size_limit_without_keeping_it(world, settings) -> None:
    settings.KNOWLEDGE_MAX_FILE_MB = 1
    kb = kb_of(world)
    [outcome] = upload(kb, {"big.txt": b"word " * (300 * 1024)})
    assert outcome.result == "rejected"
    assert "larger than the 1 MB limit" in outcome.document.error
    assert [p for p in storage.root().rglob("*") if p.is_file()] == []


def test_it_records_every_step_in_the_audit_trail(world) -> None:
    from audit.models import AuditEvent

    kb = kb_of(world)
    [outcome] = upload(kb, {"handbook.md": HANDBOOK.encode()})
    run_pipeline(outcome.document)
    with tenant_context(world.tenant_a.pk):
        actions = list(AuditEvent.objects.filter(target_type="document", target_id=str(outcome.document.pk))
                       .order_by("seq").values_list("action", flat=True))
    assert actions == ["document.upload", "document.chunk", "document.ready"]


def test_it_uses_the_knowledge_bases_chunk_size(world) -> None:
    kb = kb_of(world, chunk_max_tokens=48, chunk_overlap_tokens=8)
    long_text = "# Policy\n\n" + " ".join(f"Rule {i} says that staff keep record {i} for audit." for i in range(40))
    [outcome] = upload(kb, {"policy.md": long_text.encode()})
    chunks = chunks_of(run_pipeline(outcome.document))
    assert len(chunks) > 5 and max(c.token_count for c in chunks) <= 48


def test_it_marks_a_document_stuck_in_a_step_as_failed(world, settings) -> None:
    settings.KNOWLEDGE_STALE_S = 0
    kb = kb_of(world)
    [outcome] = upload(kb, {"handbook.md": HANDBOOK.encode()})
    with tenant_context(world.tenant_a.pk):
        Document.objects.filter(pk=outcome.document.pk).update(status="parsing")
    assert documents_sweep_stale() == 1
    with tenant_context(world.tenant_a.pk):
        document = Document.objects.get(pk=outcome.document.pk)
    assert document.status == "failed" and "Retry" in document.error


def test_it_reads_uploads_from_plain_file_objects(world) -> None:
    kb = kb_of(world)
    handle = io.BytesIO(HANDBOOK.encode())
    handle.name = "handbook.md"
    [outcome] = documents_upload(knowledge_base=kb, files=[handle], uploaded_by=None, actor=SYSTEM)
    assert outcome.result == "queued"


def test_it_seeds_the_demo_handbook_once_and_it_ingests(world) -> None:
    kb = demo_knowledge_seed(tenant=world.tenant_a)
    assert kb is not None and demo_knowledge_seed(tenant=world.tenant_a) is None
    with tenant_context(world.tenant_a.pk):
        [document] = Document.objects.filter(knowledge_base=kb)
    document = run_pipeline(document)
    assert document.status == "ready" and document.chunk_count >= 6
    assert any("员工" in c.text for c in chunks_of(document))
