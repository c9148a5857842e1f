"""The project's Redis clients: one module, so every part shares one connection pool per process.

Redis carries the Celery broker, the channel layer, the token streams (`chat.streams`), the Stop
flags, the routing latencies (`inference.routing`) and the gpu worker's ready flag. Django's cache
and Celery make their own connections from `settings.REDIS_URL`; everything else asks here.
"""

from __future__ import annotations

import threading

import redis
import redis.asyncio as aioredis
from django.conf import settings

_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}


def _shared(name: str, **options: float) -> redis.Redis:
    with _lock:
        client = _clients.get(name)
        if client is None:
            # Blocking: redis-py 8 caps a pool at 100 connections and fails the 101st command at
            # once; a worker with hundreds of threads (one per streaming turn) then lost turns to
            # "Too many connections". Threads wait for a connection instead (commands are short).
            pool = redis.BlockingConnectionPool.from_url(
                settings.REDIS_URL, decode_responses=True, max_connections=settings.REDIS_POOL_MAX_SIZE,
                timeout=settings.REDIS_POOL_TIMEOUT_S, **options,
            )
            client = _clients[name] = redis.Redis(connection_pool=pool)
        return client


def sync_client() -> redis.Redis:
    """The process-wide client, with redis-py's default timeouts."""
    return _shared("default")


def fast_client() -> redis.Redis:
    """A process-wide client with one-second timeouts, for reads a turn must not wait on (a slow
    Redis then costs a turn its optional data, such as routing latencies, never its answer)."""
    return _shared("fast", socket_timeout=1.0, socket_connect_timeout=1.0)


def async_client(*, socket_timeout: float) -> aioredis.Redis:
    """A new asyncio client. One per caller (a consumer connection, an API stream): asyncio clients
    are bound to the event loop that made them. Blocking reads need a socket timeout longer than
    their block time (redis-py's default of 5 s races a 5 s XREAD). The caller closes it."""
    return aioredis.Redis.from_url(settings.REDIS_URL, decode_responses=True, socket_timeout=socket_timeout)
