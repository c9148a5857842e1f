"""An open chat socket follows its user's access (issue 12: it outlived logout and deactivation,
kept submitting turns, and they were answered and counted against the quota)."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from audit.services import actor_for
from chat.models import Conversation, Message
from chat.socket_access import CLOSE_ACCESS_CHANGED
from chat.tests.test_consumer import connect
from console import services as console_services
from tenants.models import Membership
from tenants.rls import tenant_context

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def conversation(world) -> Conversation:
    with tenant_context(world.tenant_a.pk):
        return Conversation.objects.create(tenant=world.tenant_a, user=world.alice)


def _membership(world, user) -> Membership:
    with tenant_context(world.tenant_a.pk):
        return Membership.objects.select_related("user").get(tenant=world.tenant_a, user=user)


async def closed_with(communicator: WebsocketCommunicator) -> Any:
    """The close code the server sent, after any frames before it."""
    while True:
        output = await communicator.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            return output.get("code")


def _stored_questions(conversation: Conversation) -> int:
    with tenant_context(conversation.tenant_id):
        return Message.objects.filter(conversation=conversation, role=Message.Role.USER).count()


async def test_it_closes_the_socket_when_the_owner_deactivates_the_member(world, conversation) -> None:
    communicator, connected, _ = await connect(world.alice, conversation.pk)
    assert connected

    def deactivate() -> None:
        with tenant_context(world.tenant_a.pk):
            console_services.membership_set_active(membership=_membership(world, world.alice), active=False,
                                                   actor=actor_for(user_id=world.bob.pk, role="owner"))

    await database_sync_to_async(deactivate)()
    assert await closed_with(communicator) == CLOSE_ACCESS_CHANGED


async def test_it_closes_the_socket_on_logout(world, conversation) -> None:
    communicator, connected, _ = await connect(world.alice, conversation.pk)
    assert connected

    def log_out() -> None:
        client = Client()
        client.force_login(world.alice)
        client.post("/logout/")

    await database_sync_to_async(log_out)()
    assert await closed_with(communicator) == CLOSE_ACCESS_CHANGED


async def test_it_refuses_a_submit_once_the_membership_is_gone_even_unannounced(world, conversation) -> None:
    communicator, connected, _ = await connect(world.alice, conversation.pk)
    assert connected

    def deactivate_quietly() -> None:  # a direct database change: no socket is told
        with tenant_context(world.tenant_a.pk):
            Membership.objects.filter(tenant=world.tenant_a, user=world.alice).update(is_active=False)

    await database_sync_to_async(deactivate_quietly)()
    await communicator.send_json_to({"type": "submit", "text": "Still here?"})
    frame = await communicator.receive_json_from(timeout=5)
    assert frame["type"] == "error" and "access" in frame["error"]
    assert await closed_with(communicator) == CLOSE_ACCESS_CHANGED
    assert await database_sync_to_async(_stored_questions)(conversation) == 0
