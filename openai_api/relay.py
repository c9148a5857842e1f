"""Reads one API turn's Redis Stream (the same numbered chunks the chat page's WebSocket relays)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable

from django.conf import settings

from chat import streams
from chat.models import Message

# A comment line keeps idle connections (and proxies) open while a turn waits for a worker.
KEEPALIVE_S = 15.0


async def turn_entries(reply: Message,
                       is_final: Callable[[], Awaitable[bool]]) -> AsyncGenerator[streams.StreamEntry, None]:
    """Every entry of the turn in order, up to and including its `end`, with `keepalive` entries
    while it is quiet (see `chat.streams.follow`).

    When the reader stops early (the client went away), the turn is stopped in the engine, as the
    Stop button does: nobody is left to read the answer.
    """
    client = streams.reader_client()
    ended = False
    try:
        async for entry in streams.follow(client, reply, 0, is_final=is_final, keepalive_s=KEEPALIVE_S):
            ended = entry.kind == "end"
            yield entry
    finally:
        if not ended:
            await client.set(streams.cancel_key(reply), "1", ex=settings.CHAT_STREAM_TTL_S)
        await client.aclose()
