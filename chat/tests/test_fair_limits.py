"""Caps on a chat socket: turns in flight per user and tenant, open sockets, and the queue position."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async

from chat import dispatch, socket_limits
from chat.models import Conversation
from chat.tests.test_consumer import connect
from tenants.rls import tenant_context

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def conversation(world) -> Conversation:
    with tenant_context(world.tenant_a.pk):
        return Conversation.objects.create(tenant=world.tenant_a, user=world.alice)


@database_sync_to_async
def conversation_of(user, tenant) -> Conversation:
    with tenant_context(tenant.pk):
        return Conversation.objects.create(tenant=tenant, user=user)


async def submit(communicator, text: str) -> dict[str, Any]:
    await communicator.send_json_to({"type": "submit", "text": text})
    while True:
        frame = await communicator.receive_json_from(timeout=5)
        if frame["type"] in ("submitted", "error"):
            return frame


async def test_it_refuses_a_submit_beyond_the_users_turns_in_flight(world, conversation, settings) -> None:
    settings.CHAT_MAX_IN_FLIGHT_PER_USER = 2
    communicator, connected, _ = await connect(world.alice, conversation.pk)
    assert connected
    assert (await submit(communicator, "one"))["type"] == "submitted"
    assert (await submit(communicator, "two"))["type"] == "submitted"
    refused = await submit(communicator, "three")
    assert refused["type"] == "error" and "already have 2 questions waiting" in refused["error"]
    # Bob, in the same tenant, is not held back by Alice's cap.
    bobs = await conversation_of(world.bob, world.tenant_a)
    other, connected, _ = await connect(world.bob, bobs.pk)
    assert (await submit(other, "mine"))["type"] == "submitted"
    await communicator.disconnect()
    await other.disconnect()


async def test_it_refuses_a_submit_beyond_the_tenants_turns_in_flight(world, conversation, settings) -> None:
    settings.CHAT_MAX_IN_FLIGHT_PER_TENANT = 1
    communicator, _, _ = await connect(world.alice, conversation.pk)
    assert (await submit(communicator, "one"))["type"] == "submitted"
    bobs = await conversation_of(world.bob, world.tenant_a)
    other, _, _ = await connect(world.bob, bobs.pk)
    refused = await submit(other, "two")
    assert refused["type"] == "error" and "Your organisation already has 1 questions" in refused["error"]
    # Charlie's tenant has its own cap.
    charlies = await conversation_of(world.charlie, world.tenant_b)
    third, _, _ = await connect(world.charlie, charlies.pk)
    assert (await submit(third, "three"))["type"] == "submitted"
    for each in (communicator, other, third):
        await each.disconnect()


async def closed_with(communicator) -> dict[str, Any]:
    frame = await communicator.receive_json_from(timeout=5)
    assert frame["type"] == "error"
    closing = await communicator.receive_output(timeout=5)
    assert closing["type"] == "websocket.close"
    return {"error": frame["error"], "code": closing["code"], "reason": closing.get("reason", "")}


async def test_it_closes_a_socket_beyond_the_users_open_streams_with_4429(world, conversation, settings) -> None:
    settings.CHAT_MAX_STREAMS_PER_USER = 2
    first, connected_1, _ = await connect(world.alice, conversation.pk)
    second, connected_2, _ = await connect(world.alice, conversation.pk)
    assert connected_1 and connected_2
    third, connected, _ = await connect(world.alice, conversation.pk)
    assert connected  # accepted, so that the page can read why it is closed
    closed = await closed_with(third)
    assert closed["code"] == socket_limits.CLOSE_TOO_MANY and "2 chat tabs open" in closed["reason"]
    await first.disconnect()  # a closed tab gives its slot back
    again, connected, _ = await connect(world.alice, conversation.pk)
    assert connected
    await again.send_json_to({"type": "submit", "text": "still usable"})
    assert (await again.receive_json_from(timeout=5))["type"] == "submitted"
    await second.disconnect()
    await again.disconnect()


async def test_it_closes_a_socket_beyond_the_tenants_open_streams_with_4429(world, conversation, settings) -> None:
    settings.CHAT_MAX_STREAMS_PER_TENANT = 1
    first, connected, _ = await connect(world.alice, conversation.pk)
    assert connected
    bobs = await conversation_of(world.bob, world.tenant_a)
    refused, _, _ = await connect(world.bob, bobs.pk)
    closed = await closed_with(refused)
    assert closed["code"] == 4429 and "organisation" in closed["reason"]
    charlies = await conversation_of(world.charlie, world.tenant_b)
    other, connected, _ = await connect(world.charlie, charlies.pk)
    assert connected  # another tenant's sockets are counted apart
    await first.disconnect()
    await other.disconnect()


async def test_it_tells_a_waiting_turn_how_many_start_before_it(world, conversation) -> None:
    for message_id in (900001, 900002, 900003):  # three turns of Alice's wait already
        dispatch.enqueue(tenant_id=world.tenant_a.pk, user_id=world.alice.pk, message_id=message_id, weight=1)
    communicator, _, _ = await connect(world.alice, conversation.pk)
    submitted = await submit(communicator, "my question")
    assert submitted["type"] == "submitted"
    queued = await communicator.receive_json_from(timeout=5)
    assert queued == {"type": "queued", "message_id": submitted["message_id"], "ahead": 3}
    dispatch.discard(900001)  # one ahead of it started (or was stopped)
    queued = await communicator.receive_json_from(timeout=5)
    assert queued == {"type": "queued", "message_id": submitted["message_id"], "ahead": 2}
    await communicator.disconnect()
