"""Completeness: every catalogued action, performed for real, leaves exactly one matching event;
and nothing that changes state can be added without being catalogued and covered here."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from audit.admin_audit import AuditedModelAdmin
from audit.catalogue import CATALOGUE
from audit.models import AuditEvent
from audit.services import SYSTEM, actor_for
from chat import services as chat_services
from chat import turns as chat_turns
from chat.models import Conversation, Message
from console import services as tenant_services
from tenants.models import Tenant
from tenants.rls import tenant_context


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def superuser_client() -> Client:
    root = User.objects.create_superuser("root", password="root-pass-2026")
    return logged_in(root)


def conversation_of(world) -> Conversation:
    with tenant_context(world.tenant_a.pk):
        return Conversation.objects.create(tenant=world.tenant_a, user=world.alice, title="t")


def alice(world):
    return actor_for(user_id=world.alice.pk, role="employee", name="alice")


def submit(world) -> Message:
    conversation = conversation_of(world)
    with tenant_context(world.tenant_a.pk):  # as the chat consumer calls it
        _, reply = chat_services.message_submit(conversation=conversation, text="hi", actor=alice(world))
    return reply


def cancel(world) -> Message:
    message = submit(world)
    with tenant_context(world.tenant_a.pk):  # as the chat consumer calls it
        return chat_services.message_cancel(message=message, actor=alice(world))


def _stale(world) -> None:
    reply = submit(world)
    with tenant_context(world.tenant_a.pk):
        Message.objects.filter(pk=reply.pk).update(status="streaming", updated_at=timezone.now() - timedelta(days=1))
    chat_turns.turns_sweep_stale()


def _membership(world, user) -> int:
    from tenants.models import Membership
    from tenants.rls import tenant_context

    with tenant_context(world.tenant_a.pk):
        return Membership.objects.get(tenant=world.tenant_a, user=user).pk


def _reactivate(world) -> None:
    client = logged_in(world.bob)
    client.post(reverse("console:membership_set_active", args=[_membership(world, world.alice)]), {"active": "0"})
    client.post(reverse("console:membership_set_active", args=[_membership(world, world.alice)]), {"active": "1"})


def _switch(world) -> None:
    tenant_services.membership_create(tenant=world.tenant_b, user=world.alice, role="employee", actor=alice(world))
    logged_in(world.alice).post(reverse("console:tenant_switch"), {"tenant_id": world.tenant_b.pk})


def _prune(world) -> None:
    from audit.services import audit_prune_expired

    submit(world)  # something to expire
    _expire_everything(world)
    audit_prune_expired(chain=world.tenant_a.pk)


def _expire_everything(world) -> None:
    """The platform (the privileged role) sets tenant A's retention to 0 days, its floor lowered."""
    from django.test import override_settings

    from audit.services import audit_retention_set

    with override_settings(AUDIT_MIN_RETENTION_DAYS=0):
        audit_retention_set(chain=world.tenant_a.pk, days=0, actor=SYSTEM)


def _retention_set(world) -> None:
    from audit.services import audit_retention_set

    audit_retention_set(chain=world.tenant_a.pk, days=365, actor=SYSTEM)


def _kb(world):
    from knowledge.services.knowledge_bases import knowledge_base_create

    with tenant_context(world.tenant_a.pk):
        return knowledge_base_create(tenant=world.tenant_a, name="Handbook", actor=alice(world))


def _document(world, status: str = "queued"):
    from knowledge.models import Document

    kb = _kb(world)
    with tenant_context(world.tenant_a.pk):
        return Document.objects.create(tenant=world.tenant_a, knowledge_base=kb, name="a.md", title="a.md",
                                       status=status, stored_name="")


def _upload(world, name: str, data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    kb = _kb(world)
    return logged_in(world.erin).post(reverse("knowledge:document_upload", args=[kb.pk]),
                                      {"files": [SimpleUploadedFile(name, data)]})


def _ingest(world):
    """Uploads a Markdown file and runs the pipeline's steps in this process."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from audit.services import SYSTEM
    from knowledge.services import documents

    kb = _kb(world)
    [outcome] = documents.documents_upload(
        knowledge_base=kb, files=[SimpleUploadedFile("a.md", b"# Title\n\nSome text.")], uploaded_by=None,
        actor=SYSTEM)
    return outcome.document


def _chunk(world) -> None:
    from knowledge.services import pipeline

    document = _ingest(world)
    pipeline.document_ingest(tenant_id=document.tenant_id, document_id=document.pk)


def _ready(world) -> None:
    from knowledge.services import pipeline

    document = _ingest(world)
    pipeline.document_ingest(tenant_id=document.tenant_id, document_id=document.pk)
    pipeline.document_embed(tenant_id=document.tenant_id, document_id=document.pk)


def _fail(world) -> None:
    from knowledge.services import pipeline

    document = _document(world, status="parsing")
    with tenant_context(world.tenant_a.pk):
        type(document).objects.filter(pk=document.pk).update(updated_at=timezone.now() - timedelta(days=1))
    pipeline.documents_sweep_stale()


def _retry(world):
    from knowledge.models import Document

    document = _ingest(world)
    with tenant_context(world.tenant_a.pk):
        Document.objects.filter(pk=document.pk).update(status="failed")
    return logged_in(world.erin).post(reverse("knowledge:document_retry", args=[document.pk]))


def _source(world):
    from knowledge.models import KnowledgeSource

    kb = _kb(world)
    with tenant_context(world.tenant_a.pk):
        return KnowledgeSource.objects.create(tenant=world.tenant_a, knowledge_base=kb, kind="folder",
                                              location="/nonexistent")


def _source_create(world):
    import tempfile
    from pathlib import Path

    from django.test import override_settings

    kb = _kb(world)
    with tempfile.TemporaryDirectory() as folder, override_settings(KNOWLEDGE_FOLDER_ROOTS=[Path(folder)]):
        return logged_in(world.erin).post(reverse("knowledge:source_create", args=[kb.pk]),
                                          {"kind": "folder", "location": folder, "sync_interval_minutes": 60})


def _source_sync(world) -> None:
    from knowledge.services.sources import source_sync

    source = _source(world)
    source_sync(tenant_id=source.tenant_id, source_id=source.pk)


def _choose_knowledge(world):
    kb = _kb(world)
    return logged_in(world.alice).post(reverse("chat:conversation_set_knowledge_bases", args=[conversation_of(world).pk]),
                                       {"knowledge_base": [kb.pk]})


def _retrieve(world) -> None:
    """A turn in a conversation that answers from a knowledge base; the engine is not needed."""
    from django.test import override_settings

    from inference import runtime
    from knowledge.models import KnowledgeBase
    from tenants.models import Membership

    _ready(world)  # "Handbook", with one embedded document
    reply = submit(world)
    with tenant_context(world.tenant_a.pk):
        chat_services.conversation_set_knowledge_bases(
            conversation=Conversation.objects.get(pk=reply.conversation_id),
            knowledge_base_ids=[KnowledgeBase.objects.get(name="Handbook").pk],
            membership=Membership.objects.get(tenant=world.tenant_a, user=world.alice), actor=alice(world))
    runtime.shutdown()
    # Retrieval runs before the engine is loaded: a missing model fails the turn after it, quickly.
    with override_settings(MODEL_PATH="/nonexistent/model"):
        chat_turns.message_generate(tenant_id=reply.tenant_id, message_id=reply.pk)
    runtime.shutdown()


def _revoke_api_key(world):
    from openai_api.services import api_key_create

    with tenant_context(world.tenant_a.pk):
        key = api_key_create(tenant=world.tenant_a, name="CI", user=world.alice, created_by=world.bob,
                             actor=alice(world)).key
    return logged_in(world.bob).post(reverse("apikeys:api_key_revoke", args=[key.pk]))


SCENARIOS: dict[str, Callable[..., object]] = {
    "auth.login": lambda w: Client().post(reverse("login"), {"username": "alice", "password": w.password}),
    "auth.login_failed": lambda w: Client().post(reverse("login"), {"username": "alice", "password": "wrong"}),
    "auth.logout": lambda w: logged_in(w.alice).post(reverse("logout")),
    "tenant.create": lambda w: tenant_services.tenant_create(name="C", slug="c", actor=alice(w)),
    "membership.create": lambda w: tenant_services.membership_create(
        tenant=w.tenant_a, user=User.objects.create_user("newbie"), role="employee", actor=alice(w)),
    "admin.add": lambda w: superuser_client().post("/admin/auth/group/add/", {"name": "auditors"}),
    "admin.change": lambda w: superuser_client().post(
        f"/admin/auth/group/{Group.objects.create(name='g').pk}/change/", {"name": "g2"}),
    "admin.delete": lambda w: superuser_client().post(
        f"/admin/auth/group/{Group.objects.create(name='g').pk}/delete/", {"post": "yes"}),
    "conversation.create": lambda w: logged_in(w.alice).post(reverse("chat:conversation_create")),
    "conversation.rename": lambda w: logged_in(w.alice).post(
        reverse("chat:conversation_rename", args=[conversation_of(w).pk]), {"title": "new"}),
    "conversation.delete": lambda w: logged_in(w.alice).post(
        reverse("chat:conversation_delete", args=[conversation_of(w).pk])),
    "message.submit": submit,
    "message.cancel": cancel,
    "message.fail_stale": _stale,
    "audit.view": lambda w: logged_in(w.dora).get(reverse("audit:event_list")),
    "audit.export": lambda w: b"".join(logged_in(w.dora).get(reverse("audit:event_export", args=["jsonl"]))),
    "audit.prune": _prune,
    "audit.retention_set": _retention_set,
    "user.create": lambda w: logged_in(w.bob).post(
        reverse("console:user_create"), {"username": "gina", "password": "a-Strong-passphrase-9", "role": "employee"}),
    "membership.role_change": lambda w: logged_in(w.bob).post(
        reverse("console:membership_change_role", args=[_membership(w, w.alice)]), {"role": "compliance"}),
    "membership.deactivate": lambda w: logged_in(w.bob).post(
        reverse("console:membership_set_active", args=[_membership(w, w.alice)]), {"active": "0"}),
    "membership.activate": _reactivate,
    # Owners may only lengthen the retention (180 days by default).
    "tenant.settings_update": lambda w: logged_in(w.bob).post(reverse("console:tenant_settings_update"), {
        "audit_retention_days": 365, "quota_messages_per_user_day": 10, "quota_tokens_per_month": 1000}),
    # The tenant's current retention and quotas: only the flag changes.
    "tenant.sensitivity_change": lambda w: logged_in(w.bob).post(reverse("console:tenant_settings_update"), {
        "audit_retention_days": 180, "quota_messages_per_user_day": 200, "quota_tokens_per_month": 2_000_000,
        "sensitive": "on"}),
    "tenant.switch": _switch,
    "knowledge_base.create": lambda w: logged_in(w.erin).post(reverse("knowledge:knowledge_base_create"), {
        "name": "Handbook", "access_roles": ["employee"], "chunk_max_tokens": 256, "chunk_overlap_tokens": 32}),
    "knowledge_base.update": lambda w: logged_in(w.erin).post(reverse("knowledge:knowledge_base_update", args=[_kb(w).pk]), {
        "name": "Handbook 2", "access_roles": ["employee"], "chunk_max_tokens": 256, "chunk_overlap_tokens": 32}),
    "knowledge_base.sensitivity_change": lambda w: logged_in(w.erin).post(
        reverse("knowledge:knowledge_base_update", args=[_kb(w).pk]), {
            "name": "Handbook", "access_roles": ["employee"], "chunk_max_tokens": 256, "chunk_overlap_tokens": 32,
            "sensitive": "on"}),
    "knowledge_base.delete": lambda w: logged_in(w.erin).post(reverse("knowledge:knowledge_base_delete", args=[_kb(w).pk])),
    "document.upload": lambda w: _upload(w, "a.md", b"# Hello"),
    "document.reject": lambda w: _upload(w, "empty.md", b""),
    "document.chunk": _chunk,
    "document.ready": _ready,
    "document.fail": _fail,
    "document.retry": _retry,
    "document.delete": lambda w: logged_in(w.erin).post(reverse("knowledge:document_delete", args=[_document(w).pk])),
    "document.view": lambda w: logged_in(w.erin).get(reverse("knowledge:document_detail", args=[_document(w).pk])),
    "source.create": _source_create,
    "source.delete": lambda w: logged_in(w.erin).post(reverse("knowledge:source_delete", args=[_source(w).pk])),
    "source.sync": _source_sync,
    "conversation.knowledge_bases": _choose_knowledge,
    "message.retrieve": _retrieve,
    "api_key.create": lambda w: logged_in(w.bob).post(reverse("apikeys:api_key_create"), {"name": "CI", "user": w.alice.pk}),
    "api_key.revoke": _revoke_api_key,
}


def test_it_has_a_scenario_for_every_catalogued_action() -> None:
    assert sorted(SCENARIOS) == sorted(CATALOGUE)


def recorded(action: str) -> list[AuditEvent]:
    """Every event of `action` in every chain: the platform's (0) and each tenant's, the scenario's new ones too."""
    found: list[AuditEvent] = []
    for chain in [0, *Tenant.objects.order_by("pk").values_list("pk", flat=True)]:
        with tenant_context(chain):
            found += AuditEvent.objects.filter(action=action)
    return found


# The privileged jobs write on a connection of their own (the owner role's): their scenarios commit.
PRIVILEGED = {"audit.prune", "audit.retention_set"}


@pytest.mark.parametrize("action", [
    pytest.param(a, marks=pytest.mark.django_db(transaction=True)) if a in PRIVILEGED else a for a in sorted(CATALOGUE)
])
def test_it_records_exactly_one_event_per_catalogued_action(world, action: str) -> None:
    before = len(recorded(action))
    SCENARIOS[action](world)
    after = recorded(action)
    assert len(after) == before + 1
    assert max(after, key=lambda e: e.pk).category == CATALOGUE[action].category


def test_it_audits_every_registered_django_admin() -> None:
    unaudited = [type(ma).__name__ for ma in admin.site._registry.values() if not isinstance(ma, AuditedModelAdmin)]
    assert unaudited == []


# Every URL of the product, by name: what it audits when it changes state, or why it needs not.
STATE_CHANGING = {
    "login": "auth.login", "logout": "auth.logout",
    "chat:conversation_create": "conversation.create", "chat:conversation_rename": "conversation.rename",
    "chat:conversation_delete": "conversation.delete",
    "audit:event_list": "audit.view", "audit:event_detail": "audit.view", "audit:event_export": "audit.export",
}
STATE_CHANGING |= {
    "console:user_create": "user.create", "console:membership_change_role": "membership.role_change",
    "console:membership_set_active": "membership.deactivate", "console:tenant_settings_update": "tenant.settings_update",
    "console:tenant_switch": "tenant.switch",
}
STATE_CHANGING |= {
    "knowledge:knowledge_base_create": "knowledge_base.create", "knowledge:knowledge_base_update": "knowledge_base.update",
    "knowledge:knowledge_base_delete": "knowledge_base.delete", "knowledge:document_upload": "document.upload",
    "knowledge:document_delete": "document.delete", "knowledge:document_retry": "document.retry",
    "knowledge:document_detail": "document.view", "knowledge:source_create": "source.create",
    "knowledge:source_delete": "source.delete",
    # Queues a sync; the sync records `source.sync` with what it found when it runs.
    "knowledge:source_sync": "source.sync",
    "api:document_list": "document.upload", "api:document_detail": "document.delete",
    "chat:conversation_set_knowledge_bases": "conversation.knowledge_bases",
    "apikeys:api_key_create": "api_key.create", "apikeys:api_key_revoke": "api_key.revoke",
    # One request of the OpenAI-compatible API is one turn, audited as the chat page's are.
    "openai:chat_completions": "message.submit",
}
READ_ONLY = {"healthz", "chat:home", "chat:conversation_detail", "console:home", "knowledge:knowledge_base_list",
             "knowledge:knowledge_base_detail", "knowledge:document_list", "api:knowledge_base_list",
             "apikeys:api_key_list", "openai:model_list", "openai:model_detail",
             # The REST API's OpenAPI schema: the same document for everyone signed in, no tenant data.
             "api_schema"}


def _names(resolver: URLResolver, namespace: str = "") -> set[str]:
    names = set()
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            if pattern.app_name == "admin":
                continue  # covered by test_it_audits_every_registered_django_admin
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            names |= _names(pattern, inner)
        elif isinstance(pattern, URLPattern):
            names.add(f"{namespace}{pattern.name}")
    return names


def test_it_knows_what_every_url_audits() -> None:
    unclassified = _names(get_resolver()) - set(STATE_CHANGING) - READ_ONLY
    assert unclassified == set(), "classify new URLs here and add their audit scenario above"
    assert set(STATE_CHANGING.values()) <= set(CATALOGUE)
