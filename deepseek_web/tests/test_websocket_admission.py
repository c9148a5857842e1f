"""Handshake admission: over the limit, a handshake is refused at once, before the application runs."""

from __future__ import annotations

import asyncio
from typing import Any

from deepseek_web.testing import run_coroutine
from deepseek_web.websocket_admission import CLOSE_TRY_AGAIN_LATER, HandshakeAdmission


def test_it_refuses_handshakes_over_the_limit_until_one_is_accepted() -> None:
    async def main() -> tuple[list[Any], list[Any], list[Any], int]:
        accept_first = asyncio.Event()
        started: list[str] = []

        async def application(scope: Any, receive: Any, send: Any) -> None:
            started.append(scope["name"])
            await receive()
            if scope["name"] == "first":
                await accept_first.wait()  # its session and database lookups take a while
            await send({"type": "websocket.accept"})

        admission = HandshakeAdmission(application, limit=1)

        async def handshake(name: str) -> list[Any]:
            sent: list[Any] = []

            async def receive() -> dict[str, Any]:
                return {"type": "websocket.connect"}

            async def send(message: Any) -> None:
                sent.append(message)

            await admission({"type": "websocket", "name": name}, receive, send)
            return sent

        first = asyncio.create_task(handshake("first"))
        await asyncio.sleep(0.05)
        second = await handshake("second")  # the first is still being set up: refused at once
        accept_first.set()
        await first
        third = await handshake("third")  # the first was accepted: room again
        assert started == ["first", "third"]  # the refused one never reached the application
        return first.result(), second, third, admission.refused

    first, second, third, refused = run_coroutine(main())
    assert first == [{"type": "websocket.accept"}]
    assert second == [{"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER}]
    assert third == [{"type": "websocket.accept"}]
    assert refused == 1
