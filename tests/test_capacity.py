"""Capacity (issue 12, finding 16): many concurrent streams through the real daphne and a real
`gpu` worker to the shipped stand-in engine; submits that are re-sent or refused."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from chat.models import Conversation, Message
from deepseek_web.testing import chat_turn, run_coroutine, ws_connect
from inference.standin import chunk_text
from tenants.rls import tenant_context

from .conftest import CAPACITY_APP_NAME, STREAM_WORKER_THREADS
from .conftest import STANDIN_TOKENS as TOKENS

pytestmark = pytest.mark.django_db(transaction=True)

STREAMS = 100
assert STREAMS < STREAM_WORKER_THREADS, "every turn must find a worker thread at once"


def session_key(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return str(client.cookies["sessionid"].value)


def conversations(world: Any, n: int) -> list[int]:
    with tenant_context(world.tenant_a.pk):
        return [Conversation.objects.create(tenant=world.tenant_a, user=world.alice).pk for _ in range(n)]


def database_connections() -> int:
    """The capacity stack's connections to the test database now (run from a helper thread, whose
    own it gives back)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND application_name = %s", [CAPACITY_APP_NAME])
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


def test_it_streams_a_hundred_concurrent_turns_without_a_dropped_chunk(world, capacity_stack, settings) -> None:
    asgi_server = capacity_stack
    key = session_key(world.alice)
    ids = conversations(world, STREAMS)
    peak = {"connections": 0}

    async def watch_connections(done: asyncio.Event) -> None:
        while not done.is_set():
            peak["connections"] = max(peak["connections"], await asyncio.to_thread(database_connections))
            await asyncio.sleep(0.2)

    async def main() -> list[Any]:
        done = asyncio.Event()
        watcher = asyncio.create_task(watch_connections(done))
        # A hundred handshakes at once: those over the web server's limit are refused at once
        # (deepseek_web/websocket_admission.py), and each client retries as chat.js does.
        results = await asyncio.gather(*(chat_turn(asgi_server, cid, key, f"question {n}", uuid.uuid4().hex,
                                                   handshake_retries=8)
                                         for n, cid in enumerate(ids)))
        done.set()
        await watcher
        return results

    results = run_coroutine(main())
    expected = "".join(chunk_text(n) for n in range(1, TOKENS + 1))
    assert [r.status for r in results] == ["done"] * STREAMS, [r.error for r in results if r.status != "done"]
    for r in results:
        # Every token, in order, each once. A worker that falls behind writes the tokens that queued
        # up as one chunk (chat.turns._watched_deltas), so there may be fewer chunks than tokens, but
        # their numbers have no gap.
        assert r.seqs == list(range(1, len(r.seqs) + 1)) and r.text == expected, r.frames[:3]
    # No turn holds a connection while it streams: the worker and the web server each share their
    # pool, where a hundred turns used to hold a hundred.
    assert 0 < peak["connections"] <= 2 * settings.DB_POOL_MAX_SIZE
    with tenant_context(world.tenant_a.pk):
        assert Message.objects.filter(role=Message.Role.ASSISTANT, status=Message.Status.DONE).count() == STREAMS


def test_it_returns_the_stored_turn_for_a_resent_client_id(world, capacity_stack) -> None:
    asgi_server = capacity_stack
    key = session_key(world.alice)
    [cid] = conversations(world, 1)
    client_id = uuid.uuid4().hex

    async def main() -> list[dict[str, Any]]:
        # The socket is cut right after the submit: its `submitted` confirmation is lost.
        async with ws_connect(asgi_server, cid, key) as ws:
            await ws.send(json.dumps({"type": "submit", "text": "once only", "client_id": client_id}))
        # The page reconnects and sends the same submit again, twice (a double click).
        seen = []
        async with ws_connect(asgi_server, cid, key) as ws:
            for _ in range(2):
                await ws.send(json.dumps({"type": "submit", "text": "once only", "client_id": client_id}))
            async for raw in ws:
                frame = json.loads(raw)
                seen.append(frame)
                if frame["type"] == "end" or len([f for f in seen if f["type"] == "submitted"]) == 2 and \
                        any(f["type"] == "end" for f in seen):
                    break
        return seen

    frames = run_coroutine(main())
    submitted = [f for f in frames if f["type"] == "submitted"]
    assert len(submitted) == 2 and submitted[0]["message_id"] == submitted[1]["message_id"]
    assert all(f["client_id"] == client_id for f in submitted)
    with tenant_context(world.tenant_a.pk):
        asked = Message.objects.filter(conversation_id=cid, role=Message.Role.USER)
        assert [(m.content, m.client_id) for m in asked] == [("once only", client_id)]
        assert Message.objects.filter(conversation_id=cid, role=Message.Role.ASSISTANT).count() == 1


def test_it_answers_a_refused_submit_with_an_error_frame_and_keeps_the_socket(world, asgi_server) -> None:
    key = session_key(world.alice)
    [cid] = conversations(world, 1)
    world.tenant_a.quota_messages_per_user_day = 1
    world.tenant_a.save(update_fields=["quota_messages_per_user_day"])
    with tenant_context(world.tenant_a.pk):  # today's one message, in another conversation
        Message.objects.create(tenant=world.tenant_a, conversation_id=conversations(world, 1)[0],
                               role=Message.Role.USER, content="earlier", status=Message.Status.DONE)

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        async with ws_connect(asgi_server, cid, key) as ws:
            await ws.send(json.dumps({"type": "submit", "text": "over quota", "client_id": "c-1"}))
            refused = json.loads(await ws.recv())
            # Still open: the next frame is answered.
            await ws.send(json.dumps({"type": "submit", "text": "x", "client_id": "c" * 100}))
            return refused, json.loads(await ws.recv())

    refused, too_long = run_coroutine(main())
    assert refused["type"] == "error" and "daily limit" in refused["error"] and refused["client_id"] == "c-1"
    assert too_long["type"] == "error" and "client id" in too_long["error"]
    with tenant_context(world.tenant_a.pk):
        assert not Message.objects.filter(conversation_id=cid).exists()
