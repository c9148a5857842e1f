"""The stream hub: one XREAD per round serves every follower of a process, each from its own position."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from chat import streams
from deepseek_web.testing import run_coroutine


def fake_message(pk: int) -> Any:
    # A stream is named by its message's id and creation time, all a stream needs of the row.
    return SimpleNamespace(pk=pk, created_at=datetime(2026, 1, 1, tzinfo=UTC))


async def never_final() -> bool:
    return False


def test_one_hub_feeds_each_follower_from_its_own_position() -> None:
    first, second = fake_message(910_001), fake_message(910_002)
    writer = streams.StreamWriter(first)
    for n in range(1, 4):
        writer.token(f"t{n} ")

    async def read_all(message: Any, after: int) -> list[tuple[int, str]]:
        client = streams.reader_client()
        try:
            return [(e.seq, e.kind) async for e in streams.follow(client, message, after, is_final=never_final)]
        finally:
            await client.aclose()

    async def main() -> tuple[list[Any], list[Any], list[Any], int]:
        readers = [asyncio.create_task(read_all(first, 0)), asyncio.create_task(read_all(first, 2)),
                   asyncio.create_task(read_all(second, 0))]
        await asyncio.sleep(0.3)
        hub = streams.stream_hub()
        followed = sum(len(group) for group in hub._followers.values())
        # Written while all three follow: each gets it once, after what it already had.
        writer.end("done")
        other = streams.StreamWriter(second)
        other.token("b1 ")
        other.end("done")
        a, b, c = await asyncio.gather(*readers)
        return a, b, c, followed

    from_start, from_two, other_stream, followed = run_coroutine(main())
    assert followed == 3
    assert from_start == [(1, "token"), (2, "token"), (3, "token"), (4, "end")]
    assert from_two == [(3, "token"), (4, "end")]
    assert other_stream == [(1, "token"), (2, "end")]


def test_the_hub_stops_reading_when_nobody_follows() -> None:
    message = fake_message(910_003)
    writer = streams.StreamWriter(message)
    writer.token("t1 ")
    writer.end("done")

    async def main() -> tuple[int, bool]:
        client = streams.reader_client()
        try:
            seen = [e.seq async for e in streams.follow(client, message, 0, is_final=never_final)]
        finally:
            await client.aclose()
        hub = streams.stream_hub()
        task = hub._task
        assert task is not None
        await asyncio.wait_for(task, 5)  # its round ends, and with nobody left it closes its client
        return len(seen), not hub._followers

    assert run_coroutine(main()) == (2, True)
