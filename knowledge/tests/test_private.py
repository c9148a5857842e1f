"""A private knowledge base (no role may use it) is private in every view: another knowledge admin of the
same tenant, or its owner, who is neither listed nor its creator, gets 404 on every knowledge page and API
route, and finds it in no list, picker, model list or lookup. Its creator and listed users keep it.

The routes are the endpoint sweep's own cases (tenants/tests/test_endpoint_sweep.py), pointed at tenant
A's private knowledge base instead of tenant B's objects: a new knowledge URL is swept here too.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from audit.services import SYSTEM
from chat.models import Conversation, ConversationKnowledgeBase
from knowledge.models import Chunk, Document, KnowledgeBase, KnowledgeSource
from knowledge.selectors import knowledge_base_ids_allowed, knowledge_bases_visible_to
from knowledge.services.knowledge_bases import knowledge_base_create
from openai_api.services import api_key_create
from tenants.models import Membership, Role
from tenants.rls import tenant_context
from tenants.tests.test_endpoint_sweep import (
    API_COLLECTION_CASES,
    API_OBJECT_CASES,
    COLLECTION_CASES,
    OBJECT_CASES,
    body_of,
)

SECRETS = ("PRIVATE-KB-NAME", "PRIVATE-DOC-TITLE", "PRIVATE-CHUNK-TEXT", "private-source.example")
KNOWLEDGE_ROUTES = ("knowledge:", "api:")


@pytest.fixture
def private(world) -> dict[str, int]:
    """Erin's private knowledge base with a document, a passage and a source; Gina, a second knowledge
    admin of tenant A; Alice listed by name. Gina's own conversation, for the picker."""
    from django.contrib.auth import get_user_model

    gina = get_user_model().objects.create_user("gina", password=world.password)
    with tenant_context(world.tenant_a.pk):
        Membership.objects.create(tenant=world.tenant_a, user=gina, role=Role.KNOWLEDGE_ADMIN)
        kb = knowledge_base_create(tenant=world.tenant_a, name=SECRETS[0], access_roles=[],
                                   member_ids=[world.alice.pk], created_by=world.erin, actor=SYSTEM)
        document = Document.objects.create(tenant=world.tenant_a, knowledge_base=kb, name=SECRETS[1],
                                           title=SECRETS[1], status="failed", stored_name="")
        Chunk.objects.create(tenant=world.tenant_a, document=document, knowledge_base=kb, ordinal=0,
                             text=SECRETS[2], content_hash="x")
        source = KnowledgeSource.objects.create(tenant=world.tenant_a, knowledge_base=kb, kind="url",
                                                location=f"https://{SECRETS[3]}/")
        conversation = Conversation.objects.create(tenant=world.tenant_a, user=gina, title="mine")
    return {"kb": kb.pk, "document": document.pk, "source": source.pk, "conversation": conversation.pk,
            "tenant": world.tenant_a.pk, "user": gina.pk, "gina": gina.pk}


def _others(world, private: dict[str, int]) -> list[Any]:
    from django.contrib.auth import get_user_model

    return [get_user_model().objects.get(pk=private["gina"]), world.bob]  # knowledge admin, owner


def test_it_hides_a_private_knowledge_base_from_other_managers_on_every_route(world, private) -> None:
    for other in _others(world, private):
        client = Client()
        client.force_login(other)
        for name, make in OBJECT_CASES.items():
            if not name.startswith(KNOWLEDGE_ROUTES):
                continue
            for method, path, data in make(private):
                response = getattr(client, method)(path, data)
                assert response.status_code == 404, f"{other} {method} {name}: {response.status_code}"
                assert not any(s in body_of(response) for s in SECRETS), f"{other} {method} {name} leaked"
        for name, make in COLLECTION_CASES.items():
            if not name.startswith(KNOWLEDGE_ROUTES):
                continue
            for method, path, data in make(private):
                response = getattr(client, method)(path, data)
                assert response.status_code < 500, f"{other} {method} {name}: {response.status_code}"
                assert not any(s in body_of(response) for s in SECRETS), f"{other} {method} {name} leaked"
        # The chat page's picker, and choosing it by id anyway.
        with tenant_context(world.tenant_a.pk):
            own = Conversation.objects.create(tenant=world.tenant_a, user=other, title="own")
        assert SECRETS[0] not in body_of(client.get(reverse("chat:conversation_detail", args=[own.pk])))
        client.post(reverse("chat:conversation_set_knowledge_bases", args=[own.pk]), {"knowledge_base": [private["kb"]]})
        with tenant_context(world.tenant_a.pk):
            assert not ConversationKnowledgeBase.objects.filter(conversation=own).exists()
            membership = Membership.objects.get(tenant=world.tenant_a, user=other)
            assert private["kb"] not in knowledge_bases_visible_to(membership).values_list("pk", flat=True)
            assert knowledge_base_ids_allowed(membership, [private["kb"]]) == []  # retrieval checks this
    with tenant_context(world.tenant_a.pk):  # nothing was changed or deleted on the way
        assert KnowledgeBase.objects.get(pk=private["kb"]).name == SECRETS[0]
        assert Document.objects.filter(pk=private["document"]).exists()
        assert KnowledgeSource.objects.filter(pk=private["source"]).exists()


def test_it_hides_a_private_knowledge_base_from_the_api_keys_of_other_managers(world, private) -> None:
    for other in _others(world, private):
        with tenant_context(world.tenant_a.pk):
            key = api_key_create(tenant=world.tenant_a, name=f"k-{other.pk}", user=other, created_by=None,
                                 actor=SYSTEM).plaintext
        client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
        for cases, statuses in ((API_OBJECT_CASES, (404,)), (API_COLLECTION_CASES, (200,))):
            for name, make in cases.items():
                for method, path, data in make(private):
                    response = (client.get(path, data) if method == "get"
                                else client.post(path, json.dumps(data), content_type="application/json"))
                    assert response.status_code in statuses, f"{other} {method} {name}: {response.status_code}"
                    assert SECRETS[0] not in body_of(response)


def test_it_keeps_a_private_knowledge_base_for_its_creator_and_listed_users(world, private) -> None:
    erin = Client()
    erin.force_login(world.erin)
    assert SECRETS[0] in body_of(erin.get(reverse("knowledge:knowledge_base_list")))
    assert erin.get(reverse("knowledge:knowledge_base_detail", args=[private["kb"]])).status_code == 200
    assert SECRETS[0] in body_of(erin.get(reverse("api:knowledge_base_list")))
    alice = Client()  # an employee listed by name: she may chat with it, and open what it cites
    alice.force_login(world.alice)
    assert SECRETS[2] in body_of(alice.get(reverse("knowledge:document_detail", args=[private["document"]])))
    assert SECRETS[0] in body_of(alice.get(reverse("api:knowledge_base_list")))
    dora = Client()  # another reader of the same tenant, not listed
    dora.force_login(world.dora)
    assert dora.get(reverse("knowledge:document_detail", args=[private["document"]])).status_code == 404
