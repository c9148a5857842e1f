"""Every endpoint, every role of tenant A, tenant B's object ids in the path and in the body:
the answer is 403 or 404 (Django admin: a redirect away), and never contains B's data. A URL
without a case here fails the build."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from audit.selectors import retention_days
from audit.services import actor_for, audit_record
from chat.models import Conversation, Message
from knowledge.models import Chunk, Document, KnowledgeBase, KnowledgeSource
from openai_api.models import ApiKey
from tenants.models import Membership
from tenants.rls import tenant_context

SECRETS = ("B-SECRET-TITLE", "B-SECRET-CONTENT", "B-SECRET-AUDIT", "B-SECRET-KB", "B-SECRET-DOC", "B-SECRET-CHUNK",
           "B-SECRET-APIKEY")
A_ROLES = ["alice", "erin", "dora", "bob"]  # employee, knowledge admin, compliance, owner


@pytest.fixture
def tenant_b_objects(world) -> dict[str, int]:
    with tenant_context(world.tenant_b.pk):
        conversation = Conversation.objects.create(tenant=world.tenant_b, user=world.charlie, title=SECRETS[0])
        message = Message.objects.create(tenant=world.tenant_b, conversation=conversation, role="user",
                                         content=SECRETS[1])
        membership = Membership.objects.get(tenant=world.tenant_b, user=world.charlie)
        kb = KnowledgeBase.objects.create(tenant=world.tenant_b, name=SECRETS[3])
        document = Document.objects.create(tenant=world.tenant_b, knowledge_base=kb, name=SECRETS[4],
                                           title=SECRETS[4], status="failed", stored_name="")
        Chunk.objects.create(tenant=world.tenant_b, document=document, knowledge_base=kb, ordinal=0,
                             text=SECRETS[5], content_hash="x")
        source = KnowledgeSource.objects.create(tenant=world.tenant_b, knowledge_base=kb, kind="url",
                                                location="https://example.com/B-SECRET-KB")
        api_key = ApiKey.objects.create(tenant=world.tenant_b, name=SECRETS[6], prefix="dsw-B", key_hash="b" * 64,
                                        user=world.charlie)
    event = audit_record(tenant_id=world.tenant_b.pk, actor=actor_for(user_id=world.charlie.pk, role="employee"),
                         action="conversation.rename", target_id=conversation.pk, payload={"title": SECRETS[2]})
    return {"conversation": conversation.pk, "message": message.pk, "event": event.pk,
            "membership": membership.pk, "user": world.charlie.pk, "tenant": world.tenant_b.pk,
            "kb": kb.pk, "document": document.pk, "source": source.pk, "api_key": api_key.pk}


Request = tuple[str, str, dict[str, Any]]
# Object endpoints: B's id in the path must give 403/404.
OBJECT_CASES: dict[str, Callable[[dict[str, int]], list[Request]]] = {
    "chat:conversation_detail": lambda b: [("get", reverse("chat:conversation_detail", args=[b["conversation"]]), {})],
    "chat:conversation_rename": lambda b: [
        ("post", reverse("chat:conversation_rename", args=[b["conversation"]]), {"title": "hijacked"})],
    "chat:conversation_delete": lambda b: [("post", reverse("chat:conversation_delete", args=[b["conversation"]]), {})],
    "audit:event_detail": lambda b: [("get", reverse("audit:event_detail", args=[b["event"]]), {})],
    "console:membership_change_role": lambda b: [
        ("post", reverse("console:membership_change_role", args=[b["membership"]]), {"role": "owner"})],
    "console:membership_set_active": lambda b: [
        ("post", reverse("console:membership_set_active", args=[b["membership"]]), {"active": "0"})],
    "console:tenant_switch": lambda b: [("post", reverse("console:tenant_switch"), {"tenant_id": b["tenant"]})],
    "chat:conversation_set_knowledge_bases": lambda b: [
        ("post", reverse("chat:conversation_set_knowledge_bases", args=[b["conversation"]]), {"knowledge_base": [b["kb"]]})],
    "knowledge:knowledge_base_detail": lambda b: [("get", reverse("knowledge:knowledge_base_detail", args=[b["kb"]]), {})],
    "knowledge:knowledge_base_update": lambda b: [("post", reverse("knowledge:knowledge_base_update", args=[b["kb"]]), {
        "name": "hijacked", "chunk_max_tokens": 256, "chunk_overlap_tokens": 32})],
    "knowledge:knowledge_base_delete": lambda b: [("post", reverse("knowledge:knowledge_base_delete", args=[b["kb"]]), {})],
    "knowledge:document_upload": lambda b: [("post", reverse("knowledge:document_upload", args=[b["kb"]]), {})],
    "knowledge:document_list": lambda b: [("get", reverse("knowledge:document_list", args=[b["kb"]]), {})],
    "knowledge:source_create": lambda b: [("post", reverse("knowledge:source_create", args=[b["kb"]]), {
        "kind": "url", "location": "https://example.com/", "sync_interval_minutes": 60})],
    "knowledge:source_delete": lambda b: [("post", reverse("knowledge:source_delete", args=[b["source"]]), {})],
    "knowledge:source_sync": lambda b: [("post", reverse("knowledge:source_sync", args=[b["source"]]), {})],
    "knowledge:document_detail": lambda b: [("get", reverse("knowledge:document_detail", args=[b["document"]]), {})],
    "knowledge:document_delete": lambda b: [("post", reverse("knowledge:document_delete", args=[b["document"]]), {})],
    "knowledge:document_retry": lambda b: [("post", reverse("knowledge:document_retry", args=[b["document"]]), {})],
    "api:document_list": lambda b: [("get", reverse("api:document_list", args=[b["kb"]]), {}),
                                ("post", reverse("api:document_list", args=[b["kb"]]), {})],
    "api:document_detail": lambda b: [("get", reverse("api:document_detail", args=[b["document"]]), {}),
                               ("delete", reverse("api:document_detail", args=[b["document"]]), {})],
    "apikeys:api_key_revoke": lambda b: [("post", reverse("apikeys:api_key_revoke", args=[b["api_key"]]), {})],
}
# Endpoints without an object in the path: B's ids go in the query and the body instead.
COLLECTION_CASES: dict[str, Callable[[dict[str, int]], list[Request]]] = {
    "chat:home": lambda b: [("get", reverse("chat:home"), {"conversation": b["conversation"]})],
    "chat:conversation_create": lambda b: [("post", reverse("chat:conversation_create"), {"conversation": b["conversation"]})],
    "audit:event_list": lambda b: [("get", reverse("audit:event_list"), {"target": f"conversation:{b['conversation']}"})],
    "audit:event_export": lambda b: [
        ("get", reverse("audit:event_export", args=[fmt]), {"target": f"conversation:{b['conversation']}"})
        for fmt in ("jsonl", "csv")
    ],
    "healthz": lambda b: [("get", reverse("healthz"), {"id": b["conversation"]})],
    "api_schema": lambda b: [("get", reverse("api_schema"), {"format": "json", "tenant": b["tenant"]})],
    "console:home": lambda b: [("get", reverse("console:home"), {"membership": b["membership"]})],
    "console:user_create": lambda b: [("post", reverse("console:user_create"),
                                      {"username": "charlie", "password": "x", "role": "owner"})],
    "console:tenant_settings_update": lambda b: [("post", reverse("console:tenant_settings_update"),
                                           {"tenant": b["tenant"], "audit_retention_days": "5"})],
    "login": lambda b: [("get", reverse("login"), {"next": f"/c/{b['conversation']}/"})],
    "logout": lambda b: [("post", reverse("logout"), {"next": f"/c/{b['conversation']}/"})],
    "knowledge:knowledge_base_list": lambda b: [("get", reverse("knowledge:knowledge_base_list"), {"kb": b["kb"]})],
    "knowledge:knowledge_base_create": lambda b: [("post", reverse("knowledge:knowledge_base_create"), {"name": "kb", "tenant": b["tenant"],
                                                                          "chunk_max_tokens": 256,
                                                                          "chunk_overlap_tokens": 32})],
    "api:knowledge_base_list": lambda b: [("get", reverse("api:knowledge_base_list"), {"tenant": b["tenant"]})],
    "apikeys:api_key_list": lambda b: [("get", reverse("apikeys:api_key_list"), {"api_key": b["api_key"]})],
    "apikeys:api_key_create": lambda b: [("post", reverse("apikeys:api_key_create"), {"name": "hijack", "user": b["user"],
                                                                      "tenant": b["tenant"]})],
}
# The OpenAI-compatible API authenticates by bearer key: each is swept with tenant A's keys (one
# per role) asking for B's knowledge base. Object requests must get 404 model_not_found.
API_OBJECT_CASES: dict[str, Callable[[dict[str, int]], list[Request]]] = {
    "openai:model_detail": lambda b: [("get", reverse("openai:model_detail", args=[f"deepseek-web:kb:{b['kb']}"]), {})],
    "openai:chat_completions": lambda b: [
        ("post", reverse("openai:chat_completions"), {
            "model": f"deepseek-web:kb:{b['kb']}", "stream": stream, "user": str(b["user"]),
            "messages": [{"role": "user", "content": f"Summarise conversation {b['conversation']}"}]})
        for stream in (False, True)
    ],
}
API_COLLECTION_CASES: dict[str, Callable[[dict[str, int]], list[Request]]] = {
    "openai:model_list": lambda b: [("get", reverse("openai:model_list"), {"tenant": b["tenant"]})],
}


def _names(resolver: URLResolver, namespace: str = "") -> set[str]:
    names = set()
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            if pattern.app_name == "admin":
                continue  # swept model by model below
            names |= _names(pattern, f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace)
        elif isinstance(pattern, URLPattern):
            names.add(f"{namespace}{pattern.name}")
    return names


def test_it_has_a_sweep_case_for_every_url_and_websocket_route() -> None:
    from chat.websocket_urls import websocket_urlpatterns

    assert _names(get_resolver()) == (set(OBJECT_CASES) | set(COLLECTION_CASES) | set(API_OBJECT_CASES)
                                      | set(API_COLLECTION_CASES))
    # The one WebSocket route is swept below; a new route must get its own case here.
    assert [str(p.pattern) for p in websocket_urlpatterns] == ["ws/chat/<int:conversation_id>/"]


def body_of(response: Any) -> str:
    content = b"".join(response) if getattr(response, "streaming", False) else response.content
    return content.decode(errors="replace")


@pytest.mark.parametrize("who", A_ROLES)
def test_it_refuses_tenant_b_objects_to_every_role_of_tenant_a(world, tenant_b_objects, who) -> None:
    client = Client()
    client.force_login(getattr(world, who))
    for name, make in OBJECT_CASES.items():
        for method, path, data in make(tenant_b_objects):
            response = getattr(client, method)(path, data)
            assert response.status_code in (403, 404), f"{who} {method} {name}: {response.status_code}"
            assert not any(s in body_of(response) for s in SECRETS), f"{who} {method} {name} leaked"
    for name, make in COLLECTION_CASES.items():
        for method, path, data in make(tenant_b_objects):
            response = getattr(client, method)(path, data)
            assert response.status_code < 500, f"{who} {method} {name}: {response.status_code}"
            assert not any(s in body_of(response) for s in SECRETS), f"{who} {method} {name} leaked"
        client.force_login(getattr(world, who))  # logout was one of the cases
    with tenant_context(world.tenant_b.pk):
        assert Conversation.objects.get(pk=tenant_b_objects["conversation"]).title == SECRETS[0]
        assert Membership.objects.get(pk=tenant_b_objects["membership"]).role == "employee"
        assert KnowledgeBase.objects.get(pk=tenant_b_objects["kb"]).name == SECRETS[3]
        assert Document.objects.filter(pk=tenant_b_objects["document"]).exists()
        assert KnowledgeSource.objects.filter(pk=tenant_b_objects["source"]).exists()
        assert ApiKey.objects.get(pk=tenant_b_objects["api_key"]).revoked_at is None
    assert retention_days(world.tenant_b.pk) == 180


@pytest.mark.parametrize("who", A_ROLES)
def test_it_shows_tenant_a_api_keys_nothing_of_tenant_b(world, tenant_b_objects, who) -> None:
    import json

    from audit.services import SYSTEM
    from openai_api.services import api_key_create

    with tenant_context(world.tenant_a.pk):
        key = api_key_create(tenant=world.tenant_a, name="k", user=getattr(world, who), created_by=None,
                             actor=SYSTEM).plaintext
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    for cases, statuses in ((API_OBJECT_CASES, (404,)), (API_COLLECTION_CASES, (200,))):
        for name, make in cases.items():
            for method, path, data in make(tenant_b_objects):
                if method == "get":
                    response = client.get(path, data)
                else:
                    response = client.post(path, json.dumps(data), content_type="application/json")
                assert response.status_code in statuses, f"{who} {method} {name}: {response.status_code}"
                assert not any(s in body_of(response) for s in SECRETS), f"{who} {method} {name} leaked"
    # A session is no key: the API refuses it, whatever the role.
    session = Client()
    session.force_login(getattr(world, who))
    assert session.get(reverse("openai:model_list")).status_code == 401
    with tenant_context(world.tenant_b.pk):
        assert Message.objects.count() == 1  # the fixture's own
    with tenant_context(world.tenant_a.pk):
        assert not Message.objects.exists()


def test_it_keeps_tenant_b_out_of_django_admin_for_tenant_a_owners(world, tenant_b_objects) -> None:
    from django.contrib.auth.models import Permission

    from console.services import OWNER_ADMIN_PERMISSIONS

    world.bob.is_staff = True  # what membership_create gives an owner
    world.bob.save()
    world.bob.user_permissions.add(*Permission.objects.filter(codename__in=OWNER_ADMIN_PERMISSIONS))
    client = Client()
    client.force_login(world.bob)
    membership = tenant_b_objects["membership"]
    for suffix in ("change/", "delete/", "history/"):
        response = client.get(f"/admin/tenants/membership/{membership}/{suffix}")
        # Django admin answers a missing object with a redirect to the index, not a 404.
        assert response.status_code in (302, 403, 404)
        assert "charlie" not in body_of(response)
    listing = body_of(client.get("/admin/tenants/membership/"))
    assert "charlie" not in listing and "frank" not in listing
    add_form = body_of(client.get("/admin/tenants/membership/add/"))
    assert "alice" in add_form and "charlie" not in add_form and "frank" not in add_form
    response = client.post(f"/admin/tenants/membership/{membership}/change/", {"role": "owner", "is_active": "on"})
    assert response.status_code in (302, 403, 404)
    with tenant_context(world.tenant_b.pk):
        assert Membership.objects.get(pk=membership).role == "employee"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("who", A_ROLES)
async def test_it_refuses_the_websocket_of_a_tenant_b_conversation_before_accept(world, tenant_b_objects, who) -> None:
    from deepseek_web.asgi import application

    def cookie() -> bytes:
        client = Client()
        client.force_login(getattr(world, who))
        return f"sessionid={client.cookies['sessionid'].value}".encode()

    headers = [(b"origin", b"http://localhost"), (b"cookie", await database_sync_to_async(cookie)())]
    communicator = WebsocketCommunicator(application, f"/ws/chat/{tenant_b_objects['conversation']}/", headers=headers)
    connected, code = await communicator.connect(timeout=5)
    assert not connected and code == 4404
