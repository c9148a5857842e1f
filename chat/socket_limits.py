"""Caps on open chat WebSockets per user and per tenant (issue 12: one user opened 1,000).

Each open socket holds a slot in two Redis sorted sets (its user's, its tenant's), scored by an
expiry that the socket renews while it lives. A socket whose daphne died simply expires, so a
crash never leaks slots for good. Checking and taking a slot is one Lua script: two sockets that
connect at once cannot both take the last slot. Shared by every daphne process through Redis.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from django.conf import settings

PREFIX = "dsw:sockets:"
# Close code when a cap is reached (after accept, so the page can read the code and the reason).
CLOSE_TOO_MANY = 4429
# A slot lives this long unless its socket renews it (every RENEW_S).
SLOT_TTL_S = 90
RENEW_S = 30

_ACQUIRE = """
local now, ttl, member = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local caps = {tonumber(ARGV[4]), tonumber(ARGV[5])}
for i = 1, 2 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if caps[i] > 0 and redis.call('ZCARD', KEYS[i]) >= caps[i] then return i end
end
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], now + ttl, member)
  redis.call('EXPIRE', KEYS[i], ttl * 2)
end
return 0
"""


def _keys(tenant_id: int, user_id: int) -> list[str]:
    return [f"{PREFIX}user:{user_id}", f"{PREFIX}tenant:{tenant_id}"]


async def acquire(client: aioredis.Redis, *, tenant_id: int, user_id: int, socket_id: str) -> str | None:
    """Takes a slot for this socket; None if taken, else the reason shown to the user."""
    refused = await client.eval(
        _ACQUIRE, 2, *_keys(tenant_id, user_id), time.time(), SLOT_TTL_S, socket_id,
        settings.CHAT_MAX_STREAMS_PER_USER, settings.CHAT_MAX_STREAMS_PER_TENANT,
    )
    if refused == 1:
        return (f"You have {settings.CHAT_MAX_STREAMS_PER_USER} chat tabs open, the limit; "
                "close one and reload this page.")
    if refused == 2:
        return "Your organisation has too many chat tabs open right now; please try again in a minute."
    return None


async def renew(client: aioredis.Redis, *, tenant_id: int, user_id: int, socket_id: str) -> None:
    expiry = time.time() + SLOT_TTL_S
    for key in _keys(tenant_id, user_id):
        await client.zadd(key, {socket_id: expiry}, xx=True)


async def release(client: aioredis.Redis, *, tenant_id: int, user_id: int, socket_id: str) -> None:
    for key in _keys(tenant_id, user_id):
        await client.zrem(key, socket_id)
