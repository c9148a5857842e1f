from __future__ import annotations

import pytest
from django.urls import reverse

from audit.tests.test_catalogue import _kb, _ready, alice, conversation_of, logged_in, recorded, submit
from audit.catalogue import CATALOGUE
from chat import services as chat_services
from chat.models import Conversation
from tenants.rls import tenant_context


def _choose_knowledge(world):
    kb = _kb(world)
    return logged_in(world.alice).post(reverse("chat:conversation_knowledge", args=[conversation_of(world).pk]),
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
        chat_services.message_generate(tenant_id=reply.tenant_id, message_id=reply.pk)
    runtime.shutdown()


SC = {"conversation.knowledge_bases": _choose_knowledge, "message.retrieve": _retrieve}


@pytest.mark.parametrize("action", sorted(SC))
def test_it_records_exactly_one_event_per_catalogued_action(world, action: str) -> None:
    before = len(recorded(action))
    SC[action](world)
    after = recorded(action)
    assert len(after) == before + 1
    assert max(after, key=lambda e: e.pk).category == CATALOGUE[action].category
    print(max(after, key=lambda e: e.pk).payload)
