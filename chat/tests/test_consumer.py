from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connection
from django.test import Client

from chat import streams
from chat.models import Conversation, Message
from deepseek_web.asgi import application
from tenants.rls import tenant_context

pytestmark = pytest.mark.django_db(transaction=True)


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def connect(user, conversation_id: int) -> tuple[WebsocketCommunicator, bool, int | str | None]:
    headers = [(b"origin", b"http://localhost")]
    if user is not None:
        headers.append((b"cookie", await database_sync_to_async(session_cookie)(user)))
    communicator = WebsocketCommunicator(application, f"/ws/chat/{conversation_id}/", headers=headers)
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


@pytest.fixture
def conversation(world) -> Conversation:
    with tenant_context(world.tenant_a.pk):
        return Conversation.objects.create(tenant=world.tenant_a, user=world.alice)


async def test_it_refuses_charlie_of_another_tenant_before_accept(world, conversation) -> None:
    communicator, connected, code = await connect(world.charlie, conversation.pk)
    assert not connected and code == 4404


async def test_it_refuses_a_colleague_in_the_same_tenant(world, conversation) -> None:
    communicator, connected, code = await connect(world.bob, conversation.pk)
    assert not connected and code == 4404


async def test_it_refuses_an_unknown_conversation_and_an_anonymous_user(world, conversation) -> None:
    _, connected, code = await connect(world.alice, 987654)
    assert not connected and code == 4404
    _, connected, code = await connect(None, conversation.pk)
    assert not connected and code == 4401


async def test_it_answers_a_non_json_frame_with_an_error_and_stays_usable(world, conversation) -> None:
    communicator, connected, _ = await connect(world.alice, conversation.pk)
    assert connected
    await communicator.send_to(text_data="this is {not json")
    reply = await communicator.receive_json_from(timeout=5)
    assert reply["type"] == "error" and "JSON" in reply["error"]
    await communicator.send_json_to({"type": "submit", "text": ""})
    reply = await communicator.receive_json_from(timeout=5)
    assert reply["type"] == "error" and "empty" in reply["error"]
    await communicator.send_json_to({"type": "submit", "text": "Hello there"})
    reply = await communicator.receive_json_from(timeout=5)
    assert reply["type"] == "submitted" and reply["title"] == "Hello there"
    assert "Hello there" in reply["user_html"] and f'id="msg-{reply["message_id"]}"' in reply["reply_html"]
    def stored_messages() -> list[tuple[str, str]]:
        with tenant_context(conversation.tenant_id):
            return list(Message.objects.filter(conversation=conversation).values_list("role", "status"))

    stored = await database_sync_to_async(stored_messages)()
    assert stored == [("user", "done"), ("assistant", "pending")]
    await communicator.disconnect()


def _create_assistant_message(conversation: Conversation) -> Message:
    with tenant_context(conversation.tenant_id):
        return Message.objects.create(
            tenant_id=conversation.tenant_id, conversation=conversation, role="assistant", status="streaming"
        )


async def _assistant_message(conversation: Conversation) -> Message:
    return await database_sync_to_async(_create_assistant_message)(conversation)


def _save(message: Message) -> None:
    with tenant_context(message.tenant_id):
        message.save()


async def test_it_replays_exactly_the_missing_chunks_after_a_reconnect(world, conversation) -> None:
    message = await _assistant_message(conversation)
    writer = streams.StreamWriter(message)
    for word in ["one ", "two ", "three ", "four ", "five "]:
        writer.token(word)

    first, connected, _ = await connect(world.alice, conversation.pk)
    assert connected
    await first.send_json_to({"type": "resume", "message_id": message.pk, "last_seq": 0})
    seen = [await first.receive_json_from(timeout=5) for _ in range(5)]
    assert [f["seq"] for f in seen] == [1, 2, 3, 4, 5]
    await first.disconnect()  # the client drops after chunk 3 was the last it rendered

    # While it is away, the worker goes on.
    writer.token("six ")
    writer.token("seven")
    message.content, message.status = "one two three four five six seven", "done"
    await database_sync_to_async(_save)(message)
    writer.end("done")

    second, connected, _ = await connect(world.alice, conversation.pk)
    assert connected
    await second.send_json_to({"type": "resume", "message_id": message.pk, "last_seq": 3})
    frames = []
    while True:
        frame = await second.receive_json_from(timeout=5)
        frames.append(frame)
        if frame["type"] == "end":
            break
    assert [(f["type"], f["seq"]) for f in frames] == [
        ("chunk", 4), ("chunk", 5), ("chunk", 6), ("chunk", 7), ("end", 8)
    ]
    assert "".join(f["text"] for f in frames if f["type"] == "chunk") == "four five six seven"
    assert frames[-1]["status"] == "done" and "seven" in frames[-1]["html"]
    assert await second.receive_nothing(timeout=0.3)  # exactly once: nothing more arrives
    await second.disconnect()


async def test_it_will_not_resume_or_stop_a_message_of_another_conversation(world, conversation) -> None:
    def create_other() -> Conversation:
        with tenant_context(world.tenant_b.pk):
            return Conversation.objects.create(tenant=world.tenant_b, user=world.charlie)

    other = await database_sync_to_async(create_other)()
    foreign = await _assistant_message(other)
    communicator, connected, _ = await connect(world.alice, conversation.pk)
    assert connected
    for frame in ({"type": "resume", "message_id": foreign.pk, "last_seq": 0},
                  {"type": "stop", "message_id": foreign.pk}):
        await communicator.send_to(text_data=json.dumps(frame))
        reply = await communicator.receive_json_from(timeout=5)
        assert reply["type"] == "error"
    assert not streams.is_cancel_requested(foreign)
    await communicator.disconnect()


async def test_it_keeps_relaying_after_a_quiet_spell_longer_than_the_redis_timeouts(world, conversation) -> None:
    import asyncio

    message = await _assistant_message(conversation)
    communicator, connected, _ = await connect(world.alice, conversation.pk)
    assert connected
    await communicator.send_json_to({"type": "resume", "message_id": message.pk, "last_seq": 0})
    # Longer than one blocking read and than redis-py's default 5 s socket timeout.
    await asyncio.sleep(streams.READ_BLOCK_MS / 1000 + 1.5)
    streams.StreamWriter(message).token("late but here")
    frame = await communicator.receive_json_from(timeout=10)
    assert frame == {"type": "chunk", "message_id": message.pk, "seq": 1, "text": "late but here"}
    await communicator.disconnect()


def test_the_database_itself_hides_another_tenants_rows_from_the_app_role(world, conversation) -> None:
    """Row-level security, not our querysets: the same unfiltered query sees tenant A's message only
    while the connection's tenant setting is A."""
    with tenant_context(world.tenant_a.pk):
        message = Message.objects.create(
            tenant_id=world.tenant_a.pk, conversation=conversation, role="user", status="done", content="secret"
        )
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, rolbypassrls, rolsuper FROM pg_roles WHERE rolname = current_user")
        role, bypass_rls, superuser = cursor.fetchone()
    assert role == settings.DB_APP_ROLE == "dsw_app" and not bypass_rls and not superuser
    with tenant_context(world.tenant_b.pk):
        assert not Message.objects.filter(pk=message.pk).exists()
    with tenant_context(world.tenant_a.pk):
        assert Message.objects.filter(pk=message.pk).exists()


async def test_it_never_replays_the_stream_of_an_older_message_with_the_same_id(world, conversation) -> None:
    from datetime import timedelta

    message = await _assistant_message(conversation)
    # What Redis still holds after the database was restored from a backup: a finished stream
    # of a lost row that had this same id.
    lost = Message(pk=message.pk, created_at=message.created_at - timedelta(hours=1))
    old = streams.StreamWriter(lost)
    old.token("an answer from before the restore")
    old.end("done")

    communicator, connected, _ = await connect(world.alice, conversation.pk)
    assert connected
    await communicator.send_json_to({"type": "resume", "message_id": message.pk, "last_seq": 0})
    assert await communicator.receive_nothing(timeout=0.5)
    streams.StreamWriter(message).token("the new answer")
    frame = await communicator.receive_json_from(timeout=10)
    assert frame["text"] == "the new answer" and frame["seq"] == 1
    await communicator.disconnect()


async def test_it_answers_text_postgresql_cannot_store_with_an_error_and_stays_usable(world, conversation) -> None:
    """Issue 12: a NUL or a lone surrogate in a submit failed inside the database instead."""
    communicator, connected, _ = await connect(world.alice, conversation.pk)
    assert connected
    for frame in ['{"type": "submit", "text": "a\\u0000b"}', '{"type": "submit", "text": "a\\ud800b"}']:
        await communicator.send_to(text_data=frame)
        reply = await communicator.receive_json_from(timeout=5)
        assert reply["type"] == "error" and ("NUL" in reply["error"] or "surrogate" in reply["error"])
    await communicator.send_json_to({"type": "submit", "text": "Hello again"})
    assert (await communicator.receive_json_from(timeout=5))["type"] == "submitted"
    await communicator.disconnect()
