from __future__ import annotations

import json

import pytest
from django.db import IntegrityError, connection
from django.test import AsyncClient

from audit.chain import GENESIS_HASH, verify_chain
from audit.models import AuditEvent, AuditHead
from audit.services import UnknownAuditAction, actor_for, audit_record
from chat import services as chat_services
from chat.models import Conversation
from tenants.rls import as_owner, tenant_context


def actor(user, role: str = "employee", **extra):
    return actor_for(user_id=user.pk, role=role, name=user.username, **extra)


def test_it_links_each_event_to_the_previous_one_in_its_own_tenant(world) -> None:
    first = audit_record(tenant_id=world.tenant_a.pk, actor=actor(world.alice), action="conversation.create")
    other = audit_record(tenant_id=world.tenant_b.pk, actor=actor(world.charlie), action="conversation.create")
    second = audit_record(tenant_id=world.tenant_a.pk, actor=actor(world.alice), action="conversation.delete",
                          target_type="conversation", target_id=7, payload={"title": "x"})
    assert (first.seq, first.prev_hash) == (1, GENESIS_HASH)
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert (other.seq, other.prev_hash) == (1, GENESIS_HASH)
    assert AuditHead.objects.get(chain=world.tenant_a.pk).hash == second.hash  # heads are not tenant rows
    report = verify_chain(world.tenant_a.pk)
    assert report.ok and report.verified_upto == 2


def test_it_refuses_an_action_missing_from_the_catalogue(world) -> None:
    with pytest.raises(UnknownAuditAction):
        audit_record(tenant_id=world.tenant_a.pk, actor=actor(world.alice), action="document.frobnicate")
    for chain in (0, world.tenant_a.pk, world.tenant_b.pk):
        with tenant_context(chain):
            assert not AuditEvent.objects.exists()


# Committed data: the constraint is added by the owner (the app role may not ALTER), which reconnects.
@pytest.mark.django_db(transaction=True)
def test_it_fails_the_action_when_the_audit_write_fails(world) -> None:
    with tenant_context(world.tenant_a.pk):
        conversation = Conversation.objects.create(tenant=world.tenant_a, user=world.alice, title="keep me")
    with as_owner(), connection.cursor() as cursor:
        # A real failure of the audit insert, not a mock: the table refuses every new row.
        cursor.execute("ALTER TABLE audit_auditevent ADD CONSTRAINT refuse_all CHECK (false) NOT VALID")
    try:
        with pytest.raises(IntegrityError), tenant_context(world.tenant_a.pk):  # as the view calls it
            chat_services.conversation_delete(conversation=conversation, actor=actor(world.alice))
        with tenant_context(world.tenant_a.pk):
            assert Conversation.objects.filter(pk=conversation.pk, title="keep me").exists()
    finally:
        with as_owner(), connection.cursor() as cursor:
            cursor.execute("ALTER TABLE audit_auditevent DROP CONSTRAINT IF EXISTS refuse_all")


def test_it_stores_and_exports_crlf_and_ansi_escapes_as_visible_escapes(world) -> None:
    from django.test import Client

    nasty = "evil\r\n2026-01-01 INFO forged line\x1b[2J\x1b[31mred"
    event = audit_record(
        tenant_id=world.tenant_a.pk,
        actor=actor(world.alice, user_agent=nasty, trace_id="t\r\n1"),
        action="conversation.rename", target_type="conversation", target_id=nasty, payload={"title": nasty},
    )
    with tenant_context(world.tenant_a.pk):
        event.refresh_from_db()
    for stored in (event.user_agent, event.target_id, event.payload["title"], event.trace_id):
        assert "\r" not in stored and "\n" not in stored and "\x1b" not in stored
    assert event.user_agent == "evil\\r\\n2026-01-01 INFO forged line\\x1b[2J\\x1b[31mred"
    client = Client()
    client.force_login(world.dora)
    for fmt in ("jsonl", "csv"):
        body = b"".join(client.get(f"/audit/export.{fmt}")).decode()
        assert "\x1b" not in body and "\r" not in body.replace("\r\n", "")  # csv rows end in CRLF
        assert "forged line" in body and "\n2026-01-01" not in body
    assert verify_chain(world.tenant_a.pk).ok


@pytest.mark.django_db(transaction=True)
def test_it_keeps_one_unbroken_chain_with_eight_concurrent_writers(world) -> None:
    import threading

    from django.db import connections

    per_writer = 15
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(per_writer):
                audit_record(tenant_id=world.tenant_a.pk, actor=actor(world.alice), action="message.submit",
                             target_type="message", target_id=f"{n}-{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with tenant_context(world.tenant_a.pk):
        events = list(AuditEvent.objects.filter(tenant=world.tenant_a, action="message.submit").order_by("seq"))
    assert len(events) == 8 * per_writer
    report = verify_chain(world.tenant_a.pk)
    assert report.ok, report.describe()
    with tenant_context(world.tenant_a.pk):
        seqs = list(AuditEvent.objects.filter(tenant=world.tenant_a).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))


@pytest.mark.django_db(transaction=True)
async def test_it_streams_a_large_export_in_batches(world, monkeypatch) -> None:
    from asgiref.sync import sync_to_async

    from audit import export

    monkeypatch.setattr(export, "EXPORT_BATCH", 7)  # many batches from a small trail
    for i in range(30):
        await sync_to_async(audit_record)(tenant_id=world.tenant_a.pk, actor=actor(world.alice),
                                          action="message.submit", target_id=i)
    client = AsyncClient()
    await sync_to_async(client.force_login)(world.dora)
    response = await client.get("/audit/export.jsonl", {"action": "message.submit"})
    assert response.streaming and response["Content-Type"] == "application/x-ndjson"
    chunks = [chunk async for chunk in response.streaming_content]  # type: ignore[attr-defined]
    lines = b"".join(chunks).decode().splitlines()
    assert len(chunks) == 5  # ceil(30 / 7) batches, each sent as it is read
    documents = [json.loads(line) for line in lines]
    assert [d["event"]["sequence"] for d in documents] == sorted(d["event"]["sequence"] for d in documents)
    assert {d["event"]["action"] for d in documents} == {"message.submit"} and len(documents) == 30
    first = documents[0]
    assert first["organization"]["id"] == str(world.tenant_a.pk) and first["user"]["name"] == "alice"
    assert set(first) >= {"@timestamp", "event", "user", "organization", "source", "trace", "dsw"}
    assert first["event"]["category"] == ["database"] and first["event"]["outcome"] == "success"
    assert len(first["dsw"]["hash"]) == 64
