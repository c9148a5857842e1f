"""Reads one API turn's Redis Stream (the same numbered chunks the chat page's WebSocket relays)."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable

from django.conf import settings

from chat import streams
from chat.models import Message

# A comment line keeps idle connections (and proxies) open while a turn waits for a worker.
KEEPALIVE_S = 15.0
KEEPALIVE = streams.StreamEntry(seq=0, kind="keepalive", fields={})


async def turn_entries(reply: Message,
                       is_final: Callable[[], Awaitable[bool]]) -> AsyncGenerator[streams.StreamEntry, None]:
    """Every entry of the turn in order, up to and including its `end`.

    A turn whose stream expired after it ended yields one bare `end`. When the reader stops
    early (the client went away), the turn is stopped in the engine, as the Stop button does:
    nobody is left to read the answer.
    """
    client = streams.reader_client()
    last_seq, ended = 0, False
    quiet_since = time.monotonic()
    try:
        while True:
            entries = await streams.read_after(client, reply, last_seq)
            if not entries:
                if not await client.exists(streams.stream_key(reply)) and await is_final():
                    ended = True
                    yield streams.StreamEntry(seq=last_seq, kind="end", fields={})
                    return
                if time.monotonic() - quiet_since >= KEEPALIVE_S:
                    quiet_since = time.monotonic()
                    yield KEEPALIVE
                continue
            quiet_since = time.monotonic()
            for entry in entries:
                last_seq = entry.seq
                if entry.kind == "end":
                    ended = True
                yield entry
                if ended:
                    return
    finally:
        if not ended:
            await client.set(streams.cancel_key(reply), "1", ex=settings.CHAT_STREAM_TTL_S)
        await client.aclose()
