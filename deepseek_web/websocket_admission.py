"""Admission control for WebSocket handshakes: a process sets up at most so many at once.

A chat handshake costs daphne's one process tens of milliseconds of database and Redis work
(session, user, membership, conversation, socket slot, channel group). When a thousand tabs
reconnect together (a restart, a network blip), that work queued up faster than it drained;
daphne drops a handshake that takes over 5 s, but the work queued for it still ran, for tabs
that had already given up. No handshake finished in time, and the retries only added to the
queue (bench/load_streams.py's storm: 0 of 1,000 connected).

Over the limit, a handshake is refused at once, before any of that work: the browser sees a
refused connection and retries after a random pause (chat.js), as for any other failure. The
admitted handshakes finish well within their time, and the storm drains.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# Close code before accept: daphne answers the handshake with HTTP 403.
CLOSE_TRY_AGAIN_LATER = 1013


class HandshakeAdmission:
    """ASGI middleware: at most `limit` WebSocket handshakes of this process in progress at once;
    one is in progress from its connect until the application accepts or closes it."""

    def __init__(self, inner: App, limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self.in_progress = 0
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.inner(scope, receive, send)
            return
        if self.limit > 0 and self.in_progress >= self.limit:
            self.refused += 1
            await receive()  # the websocket.connect event
            await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER})
            return
        self.in_progress += 1
        settled = False

        def settle() -> None:
            nonlocal settled
            if not settled:
                settled = True
                self.in_progress -= 1

        async def send_and_settle(message: Message) -> None:
            if message["type"] in ("websocket.accept", "websocket.close"):
                settle()
            await send(message)

        try:
            await self.inner(scope, receive, send_and_settle)
        finally:
            settle()
