"""Token streams: one Redis Stream per assistant message, entries numbered 1, 2, 3...

The entry id *is* the sequence number (`<seq>-0`), so a client that reconnects with the last
number it saw reads exactly the entries after it with XREAD, each once, in order. The channel
layer is not used for tokens: one group message per token would not survive a reconnect.

Entry kinds:
  token  {"text": ...}               text to append
  reset  {}                           a retried turn starts over: the client clears the text
  end    {"status": ..., "error": ...} the turn is final; the stored message has the full text
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis
from django.conf import settings

from chat import outages
from deepseek_web.redis_client import async_client, sync_client

if TYPE_CHECKING:
    from chat.models import Message

logger = logging.getLogger(__name__)

READ_BLOCK_MS = 5000
# The stream hub's rounds (`StreamHub`): how long one XREAD waits for a first entry, how long
# entries then gather before the next, and the pause after a failed read.
HUB_BLOCK_MS = 50
HUB_GATHER_S = 0.01
HUB_RETRY_S = 0.5
# How often a worker process reads the Stop flags of the turns it runs (`StopFlags`).
STOP_POLL_S = 0.2


def reader_client() -> aioredis.Redis:
    """A new asyncio client: a `StreamHub`'s blocking reads (its socket timeout outlasts them), or a
    socket's short commands (its slot, whether a stream still exists); the caller closes it."""
    return async_client(socket_timeout=READ_BLOCK_MS / 1000 + 25)


def _stream_id(message: Message) -> str:
    # The row id alone is not unique for ever: a database restored from a backup (or recreated)
    # reuses ids while Redis still holds the streams of the lost rows. With the creation time, a
    # new message can never replay an old message's chunks.
    return f"{message.pk}:{int(message.created_at.timestamp() * 1_000_000)}"


def stream_key(message: Message) -> str:
    return f"dsw:stream:msg:{_stream_id(message)}"


def cancel_key(message: Message) -> str:
    return f"dsw:cancel:msg:{_stream_id(message)}"


@dataclass(frozen=True)
class StreamEntry:
    seq: int
    kind: str
    fields: dict[str, str]


def _parse(entries: Any) -> list[StreamEntry]:
    # redis-py types replies loosely; with decode_responses they are [(id, {field: value})].
    out = []
    for entry_id, fields in entries:
        fields = dict(fields)
        out.append(StreamEntry(seq=int(entry_id.split("-", 1)[0]), kind=fields.pop("kind", ""), fields=fields))
    return out


class StreamTakenOver(RuntimeError):
    """Another writer appended to this stream since this one last did: the stale-turn sweeper
    ended the turn while its worker was slow. The worker stops; the sweeper's `end` stands."""


class StreamWriter:
    """Appends numbered chunks for one message. Used by the GPU worker, one writer per turn."""

    def __init__(self, message: Message, client: redis.Redis | None = None) -> None:
        self.key = stream_key(message)
        self.client = client or sync_client()
        # A retried turn continues the numbering, so clients that saw the first attempt's
        # chunks still get every later entry exactly once.
        last = _parse(self.client.xrevrange(self.key, count=1))
        self.seq = last[0].seq if last else 0

    def _add(self, kind: str, **fields: str) -> int:
        self.seq += 1
        entry: dict[Any, Any] = {"kind": kind, **fields}
        entry_id = f"{self.seq}-0"
        tries = {"n": 0}

        def add() -> None:
            tries["n"] += 1
            try:
                self.client.xadd(self.key, entry, id=entry_id)
            except redis.ResponseError as exc:
                # A retry after a lost reply: the first try may have written it. That is ours.
                if tries["n"] > 1 and _parse(self.client.xrange(self.key, entry_id, entry_id)) == _parse(
                        [(entry_id, entry)]):
                    return
                # An explicit id is refused only when the stream already holds it (or a later one):
                # somebody else wrote this number. Appending anyway would break the numbering.
                raise StreamTakenOver(f"{self.key} already has entry {self.seq}") from exc

        # Through a short Redis outage (restart, failover) the chunk waits rather than the turn failing.
        outages.retry(add, what=f"{self.key}: chunk {self.seq}")
        return self.seq

    def token(self, text: str) -> int:
        return self._add("token", text=text)

    def reset(self) -> int:
        return self._add("reset")

    def end(self, status: str, error: str = "") -> int:
        seq = self._add("end", status=status, error=error)
        outages.retry(lambda: self.client.expire(self.key, settings.CHAT_STREAM_TTL_S), what=f"{self.key}: expiry")
        return seq


def cancel_request(message: Message) -> None:
    sync_client().set(cancel_key(message), "1", ex=settings.CHAT_STREAM_TTL_S)


def is_cancel_requested(message: Message) -> bool:
    return bool(sync_client().exists(cancel_key(message)))


class StopFlags:
    """The Stop flags of every turn a worker process runs, read together by one thread.

    Each running turn used to read its own flag every 0.2 s: with 500 streaming turns that was
    2,500 Redis round trips a second, as many as the turns' chunks, each waking a thread. One MGET
    of all the flags every STOP_POLL_S costs 5. A turn `watch`es its message while it runs, asks
    `is_set` between chunks, and `unwatch`es it at its end. Through a Redis outage the last reading
    stands, and the next poll reads again.
    """

    def __init__(self, poll_s: float = STOP_POLL_S) -> None:
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._watched: dict[str, int] = {}  # key -> turns of this process watching it
        self._set: set[str] = set()
        self._thread: threading.Thread | None = None

    def watch(self, message: Message) -> str:
        key = cancel_key(message)
        with self._lock:
            self._watched[key] = self._watched.get(key, 0) + 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._poll_forever, name="stop-flags", daemon=True)
                self._thread.start()
        return key

    def unwatch(self, key: str) -> None:
        with self._lock:
            left = self._watched.get(key, 0) - 1
            if left > 0:
                self._watched[key] = left
            else:
                self._watched.pop(key, None)
                self._set.discard(key)

    def is_set(self, key: str) -> bool:
        with self._lock:
            return key in self._set

    def poll(self) -> None:
        """Reads every watched flag now (the thread does it every `poll_s`)."""
        with self._lock:
            keys = list(self._watched)
        if not keys:
            return
        values = sync_client().mget(keys)
        raised = {key for key, value in zip(keys, values, strict=True) if value}
        with self._lock:
            self._set = {key for key in raised if key in self._watched}

    def _poll_forever(self) -> None:
        while True:
            time.sleep(self.poll_s)
            try:
                self.poll()
            except Exception:  # a Redis outage or a bug must not end the thread: the next poll retries
                logger.warning("reading the Stop flags failed", exc_info=True)


# One per process: every turn of a worker shares it (chat.turns).
stop_flags = StopFlags()


class Follower:
    """One reader of one stream, registered with its process's `StreamHub`: the entries numbered
    above `last_seq` arrive in `batches`, in order, as the hub reads them."""

    def __init__(self, key: str, last_seq: int) -> None:
        self.key = key
        self.last_seq = last_seq
        self.batches: asyncio.Queue[list[StreamEntry]] = asyncio.Queue()


class StreamHub:
    """Every stream the followers of one event loop (one daphne process) follow, read together.

    Each socket used to block in an XREAD of its own, on a Redis connection of its own: 500 open
    answers meant 500 connections and 2,500 round trips a second, each parsed on daphne's one event
    loop, and the answers fell seconds behind (bench/load_streams.py). The hub sends one XREAD for
    all followed streams; it waits up to HUB_BLOCK_MS for the first entry of any of them, hands
    each follower its new entries, then lets entries gather for HUB_GATHER_S before the next round,
    so a busy process reads many chunks per round trip. It runs while anyone follows; through a
    Redis outage it retries, and every follower resumes from its own last entry.
    """

    def __init__(self) -> None:
        self._followers: dict[str, set[Follower]] = {}
        self._task: asyncio.Task[None] | None = None

    def follow(self, key: str, last_seq: int) -> Follower:
        follower = Follower(key, last_seq)
        self._followers.setdefault(key, set()).add(follower)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._read_rounds())
        return follower

    def unfollow(self, follower: Follower) -> None:
        group = self._followers.get(follower.key)
        if group is not None:
            group.discard(follower)
            if not group:
                del self._followers[follower.key]

    async def _read_rounds(self) -> None:
        client = reader_client()
        try:
            while self._followers:
                # Each stream from the earliest position any of its followers still needs.
                positions: dict[Any, Any] = {key: f"{min(f.last_seq for f in group)}-0"
                                             for key, group in self._followers.items()}
                try:
                    result: Any = await client.xread(positions, block=HUB_BLOCK_MS, count=500)
                except outages.REDIS_ERRORS:
                    logger.warning("reading the token streams failed; retrying", exc_info=True)
                    await asyncio.sleep(HUB_RETRY_S)
                    continue
                for key, raw in result or []:
                    entries = _parse(raw)
                    for follower in list(self._followers.get(key, ())):
                        new = [entry for entry in entries if entry.seq > follower.last_seq]
                        if new:
                            follower.last_seq = new[-1].seq
                            follower.batches.put_nowait(new)
                if result:
                    await asyncio.sleep(HUB_GATHER_S)
        finally:
            await client.aclose()


# One hub per event loop: asyncio Redis clients belong to the loop that made them.
_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StreamHub] = weakref.WeakKeyDictionary()


def stream_hub() -> StreamHub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = StreamHub()
    return hub


async def follow(client: aioredis.Redis, message: Message, last_seq: int, *,
                 is_final: Callable[[], Awaitable[bool]],
                 keepalive_s: float | None = None) -> AsyncIterator[StreamEntry]:
    """Every entry numbered above `last_seq`, in order, up to and including the turn's `end`.

    The one loop that follows a reply live: the chat page's WebSocket and the API's SSE relay
    both read through it, from the process's `StreamHub`. A turn whose stream expired after it
    ended (`is_final` says so, from the stored row; `client` asks Redis whether the stream is
    there) yields one bare `end` numbered `last_seq`. With `keepalive_s`, a `keepalive` entry
    (numbered 0) comes whenever nothing else came for that long, so a caller can keep an idle
    connection open while the turn waits for a worker.
    """
    hub = stream_hub()
    key = stream_key(message)
    follower = hub.follow(key, last_seq)
    try:
        quiet_since = time.monotonic()
        while True:
            try:
                entries = await asyncio.wait_for(follower.batches.get(), READ_BLOCK_MS / 1000)
            except TimeoutError:
                entries = []
            if not entries:
                if not await client.exists(key) and await is_final():
                    yield StreamEntry(seq=follower.last_seq, kind="end", fields={})
                    return
                if keepalive_s is not None and time.monotonic() - quiet_since >= keepalive_s:
                    quiet_since = time.monotonic()
                    yield StreamEntry(seq=0, kind="keepalive", fields={})
                continue
            quiet_since = time.monotonic()
            for entry in entries:
                yield entry
                if entry.kind == "end":
                    return
    finally:
        hub.unfollow(follower)


def read_all(message: Message) -> list[StreamEntry]:
    return _parse(sync_client().xrange(stream_key(message)))
