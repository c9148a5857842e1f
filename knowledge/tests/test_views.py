"""Knowledge pages and the REST API: who may do what, uploads, live status, the document viewer."""

from __future__ import annotations

from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from audit.services import SYSTEM
from knowledge.models import Chunk, Document, KnowledgeBase
from knowledge.services.knowledge_bases import knowledge_base_create
from tenants.rls import tenant_context


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def make_kb(world, **kwargs) -> KnowledgeBase:
    with tenant_context(world.tenant_a.pk):
        return knowledge_base_create(tenant=world.tenant_a, name="Handbook", actor=SYSTEM, **kwargs)


def test_it_lets_a_knowledge_admin_create_a_knowledge_base_with_access_rules(world) -> None:
    response = client_for(world.erin).post(reverse("knowledge:knowledge_base_create"), {
        "name": "Board", "description": "Minutes", "access_roles": ["compliance"], "member_ids": [world.alice.pk],
        "chunk_max_tokens": 200, "chunk_overlap_tokens": 20})
    assert response.status_code == 302
    with tenant_context(world.tenant_a.pk):
        kb = KnowledgeBase.objects.get(name="Board")
        assert kb.access_roles == ["compliance"] and kb.chunk_max_tokens == 200
        assert list(kb.members.values_list("user_id", flat=True)) == [world.alice.pk]


def test_it_refuses_knowledge_pages_to_employees_and_compliance(world) -> None:
    kb = make_kb(world)
    for user in (world.alice, world.dora):
        assert client_for(user).get(reverse("knowledge:knowledge_base_list")).status_code == 403
        assert client_for(user).get(reverse("knowledge:knowledge_base_detail", args=[kb.pk])).status_code == 403
        assert client_for(user).post(reverse("knowledge:document_upload", args=[kb.pk])).status_code == 403


def test_it_gives_charlie_404_for_tenant_a_knowledge(world) -> None:
    from tenants.models import Membership, Role

    kb = make_kb(world)
    with tenant_context(world.tenant_b.pk):
        Membership.objects.filter(user=world.charlie).update(role=Role.KNOWLEDGE_ADMIN)
    charlie = client_for(world.charlie)
    assert charlie.get(reverse("knowledge:knowledge_base_detail", args=[kb.pk])).status_code == 404
    assert charlie.post(reverse("knowledge:document_upload", args=[kb.pk]),
                        {"files": [SimpleUploadedFile("a.md", b"# x")]}).status_code == 404
    assert charlie.get(reverse("api:document_list", args=[kb.pk])).status_code == 404


def test_it_uploads_several_files_and_shows_each_outcome(world) -> None:
    kb = make_kb(world)
    response = client_for(world.erin).post(reverse("knowledge:document_upload", args=[kb.pk]), {"files": [
        SimpleUploadedFile("a.md", b"# A\n\nalpha"), SimpleUploadedFile("b.txt", b"beta"),
        SimpleUploadedFile("empty.txt", b""), SimpleUploadedFile("fake.pdf", b"\x89PNG\r\n\x1a\nxxxx"),
    ]})
    assert response.status_code == 200
    page = response.content.decode()
    assert page.count("queued for ingestion") == 2
    assert "The file is empty." in page
    assert 'data-status="failed"' in page and 'data-status="queued"' in page
    # While anything is in progress the table polls itself.
    assert 'hx-trigger="every 1s"' in page
    with tenant_context(world.tenant_a.pk):
        assert Document.objects.filter(knowledge_base=kb).count() == 4


def test_it_stops_polling_when_nothing_is_in_progress(world) -> None:
    kb = make_kb(world)
    with tenant_context(world.tenant_a.pk):
        Document.objects.create(tenant=world.tenant_a, knowledge_base=kb, name="a", title="a", status="ready",
                                progress=100, chunk_count=3)
    response = client_for(world.erin).get(reverse("knowledge:document_list", args=[kb.pk]), HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert 'id="documents"' in body and "every 1s" not in body and 'value="100"' in body


def test_it_shows_a_document_with_the_cited_passage_highlighted(world) -> None:
    kb = make_kb(world, access_roles=["employee"])
    with tenant_context(world.tenant_a.pk):
        document = Document.objects.create(tenant=world.tenant_a, knowledge_base=kb, name="a", title="Leave policy",
                                           status="ready")
        first = Chunk.objects.create(tenant=world.tenant_a, document=document, knowledge_base=kb, ordinal=0,
                                     text="Intro.", content_hash="a")
        cited = Chunk.objects.create(tenant=world.tenant_a, document=document, knowledge_base=kb, ordinal=1,
                                     text="Sixteen weeks of leave.", content_hash="b")
    response = client_for(world.alice).get(reverse("knowledge:document_detail", args=[document.pk]),
                                           {"chunk": cited.pk})
    body = response.content.decode()
    assert response.status_code == 200
    assert f'id="chunk-{cited.pk}" class="passage highlighted"' in body and "<mark>Sixteen weeks" in body
    assert f'id="chunk-{first.pk}" class="passage"' in body
    # Compliance may not chat with this knowledge base, so it may not read its documents either.
    assert client_for(world.dora).get(reverse("knowledge:document_detail", args=[document.pk])).status_code == 404


def test_it_uploads_and_lists_documents_through_the_api(world) -> None:
    kb = make_kb(world)
    erin = client_for(world.erin)
    response = erin.post(reverse("api:document_list", args=[kb.pk]), {"files": [
        SimpleUploadedFile("a.md", b"# A\n\nalpha"), SimpleUploadedFile("empty.txt", b"")]})
    assert response.status_code == 201
    body = response.json()
    assert [o["outcome"] for o in body] == ["queued", "rejected"]
    assert body[1]["document"]["error"] == body[1]["message"] and body[1]["document"]["status"] == "failed"
    listed = erin.get(reverse("api:document_list", args=[kb.pk])).json()
    assert {d["name"] for d in listed} == {"a.md", "empty.txt"}
    document_id = body[0]["document"]["id"]
    assert erin.get(reverse("api:document_detail", args=[document_id])).json()["status"] == "queued"
    assert erin.delete(reverse("api:document_detail", args=[document_id])).status_code == 204
    assert client_for(world.alice).get(reverse("api:document_list", args=[kb.pk])).status_code == 403
    # Employees list the knowledge bases they may chat with.
    assert [k["name"] for k in client_for(world.alice).get(reverse("api:knowledge_base_list")).json()] == ["Handbook"]


def test_it_rejects_an_upload_without_files(world) -> None:
    kb = make_kb(world)
    response = client_for(world.erin).post(reverse("knowledge:document_upload", args=[kb.pk]))
    assert response.status_code == 400 and "Choose one or more files" in response.content.decode()


def test_it_lets_a_knowledge_admin_mark_a_knowledge_base_sensitive_and_audits_it(world) -> None:
    from audit.models import AuditEvent

    erin = client_for(world.erin)
    fields = {"name": "Payroll", "access_roles": ["owner"], "chunk_max_tokens": 256, "chunk_overlap_tokens": 32}
    assert erin.post(reverse("knowledge:knowledge_base_create"), {**fields, "sensitive": "on"}).status_code == 302
    with tenant_context(world.tenant_a.pk):
        kb = KnowledgeBase.objects.get(name="Payroll")
    assert kb.sensitive
    page = erin.get(reverse("knowledge:knowledge_base_detail", args=[kb.pk])).content.decode()
    assert 'name="sensitive" id="id_sensitive" checked' in page and 'id="kb-sensitive"' in page
    assert erin.post(reverse("knowledge:knowledge_base_update", args=[kb.pk]), fields).status_code == 302
    with tenant_context(world.tenant_a.pk):
        kb.refresh_from_db()
        changes = list(AuditEvent.objects.filter(action="knowledge_base.sensitivity_change", target_id=str(kb.pk))
                       .values_list("payload", flat=True))
    assert not kb.sensitive and changes == [{"name": "Payroll", "sensitive": False}]
    # Charlie, a knowledge admin of tenant B, gets 404 for it.
    from tenants.models import Membership, Role

    with tenant_context(world.tenant_b.pk):
        Membership.objects.filter(user=world.charlie).update(role=Role.KNOWLEDGE_ADMIN)
    response = client_for(world.charlie).post(reverse("knowledge:knowledge_base_update", args=[kb.pk]), {**fields, "sensitive": "on"})
    assert response.status_code == 404
    with tenant_context(world.tenant_a.pk):
        kb.refresh_from_db()
    assert not kb.sensitive
