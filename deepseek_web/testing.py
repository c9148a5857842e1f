"""Support for the test suite (not imported by the product)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.contrib.auth.hashers import PBKDF2PasswordHasher


class FastPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """The real PBKDF2 hasher with few iterations, so creating test users costs milliseconds.

    Hashes keep the standard `pbkdf2_sha256$<iterations>$...` form, so a server process running
    the default settings (daphne in the browser tests) still verifies them.
    """

    iterations = 1000


T = TypeVar("T")


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` in a thread of its own. Once a browser test has run, Playwright's sync API
    keeps an event loop running in the test's thread, and `asyncio.run` refuses to start beside it."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@dataclass
class TurnResult:
    """What one WebSocket client saw of one turn (`chat_turn`)."""

    message_id: int | None = None
    status: str = ""
    error: str = ""
    seqs: list[int] = field(default_factory=list)
    text: str = ""
    # Seconds between consecutive chunks, as the client received them.
    gaps: list[float] = field(default_factory=list)
    # When each chunk arrived (time.monotonic()).
    arrivals: list[float] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)
    handshake_retries: int = 0


def ws_connect(base_url: str, conversation_id: int, session_key: str, **kwargs: Any) -> Any:
    """A real WebSocket client on a conversation, logged in by its session cookie, same origin."""
    from websockets.asyncio.client import connect

    ws_url = base_url.replace("http://", "ws://", 1) + f"/ws/chat/{conversation_id}/"
    return connect(ws_url, origin=base_url, additional_headers={"Cookie": f"sessionid={session_key}"},  # type: ignore[arg-type]  # websockets types origin as its Origin alias of str
                   max_queue=None, **kwargs)


async def chat_turn(base_url: str, conversation_id: int, session_key: str, text: str, client_id: str = "",
                    timeout_s: float = 120.0, handshake_retries: int = 0,
                    connected: Callable[[], Awaitable[None]] | None = None) -> TurnResult:
    """Submits one question over a real WebSocket and reads its frames up to the turn's `end`.

    `connected`, when given, is awaited between the handshake and the submit (a load test holds
    every client there until all are connected, so the streams run together)."""
    import asyncio

    from websockets.exceptions import InvalidHandshake

    result = TurnResult()
    # A refused or timed-out handshake is retried as chat.js retries it: full jitter, capped.
    for attempt in range(handshake_retries + 1):
        try:
            ws = await ws_connect(base_url, conversation_id, session_key, open_timeout=60)
            break
        except (OSError, TimeoutError, InvalidHandshake):
            if attempt == handshake_retries:
                raise
            result.handshake_retries += 1
            await asyncio.sleep(random.random() * min(30.0, 0.5 * 2 ** attempt))
    async with ws:
        if connected is not None:
            await connected()
        await ws.send(json.dumps({"type": "submit", "text": text, "client_id": client_id}))
        last: float | None = None
        async with asyncio.timeout(timeout_s):
            async for raw in ws:
                frame = json.loads(raw)
                result.frames.append(frame)
                if frame["type"] == "submitted":
                    result.message_id = frame["message_id"]
                elif frame["type"] == "chunk":
                    now = time.monotonic()
                    if last is not None:
                        result.gaps.append(now - last)
                    last = now
                    result.arrivals.append(now)
                    result.seqs.append(frame["seq"])
                    result.text += frame["text"]
                elif frame["type"] == "end":
                    result.status = frame["status"]
                    return result
                elif frame["type"] == "error":
                    result.error = frame["error"]
                    return result
    return result
