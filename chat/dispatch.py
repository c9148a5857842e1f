"""Fair dispatch of chat turns to the `gpu` worker: per-(tenant, user) queues in Redis.

A turn is not sent to Celery directly: a FIFO broker queue lets one user who submits 60 long
questions make every other tenant wait behind all of them (issue 12, finding 9). Instead each
turn waits in its user's Redis list, and Celery gets a *ticket* (`chat.tasks.run_next_turn`).
A ticket pops whichever turn is fairest *when a worker thread is free*, not when it was queued:

- between tenants, stride scheduling: each tenant with waiting turns has a virtual "pass"; the
  lowest pass goes next and advances by STRIDE / `Tenant.schedule_weight`, so a tenant of weight
  2 gets twice the turns of a tenant of weight 1 while both wait. A tenant that becomes active
  starts at the current virtual time, so an idle tenant banks no credit;
- within a tenant, round-robin between its users;
- at most CHAT_MAX_RUNNING_PER_TENANT turns of one tenant run at once, so one tenant never holds
  every engine slot; a ticket that finds only capped tenants ends, and each finished turn sends a
  new ticket while turns wait.

Each step is one Lua script, so concurrent tickets (threads, processes, hosts) never pop the same
turn or break the round-robin. No library offers weighted multi-level fair queueing on Redis
(Celery's own priorities are per message, not per tenant), hence these few scripts.

Keys, all under `dsw:dispatch:`: `tenants` (zset tenant -> pass), `weights` (hash), `vtime`,
`users:<t>` (ring of users with waiting turns), `q:<t>:<u>` (a user's waiting message ids),
`jobs` (hash message id -> "t:u", what waits), `running:<t>` (zset message id -> expiry).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import cast

from django.conf import settings

from deepseek_web.redis_client import sync_client

PREFIX = "dsw:dispatch:"
# One turn of a tenant of weight 1 advances its pass by this much.
STRIDE = 1_000_000

_ENQUEUE = """
local p, t, u, mid, weight = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('HEXISTS', p .. 'jobs', mid) == 1 then return 0 end
redis.call('HSET', p .. 'jobs', mid, t .. ':' .. u)
redis.call('HSET', p .. 'weights', t, weight)
local q = p .. 'q:' .. t .. ':' .. u
if redis.call('RPUSH', q, mid) == 1 then redis.call('RPUSH', p .. 'users:' .. t, u) end
if not redis.call('ZSCORE', p .. 'tenants', t) then
  local vtime = tonumber(redis.call('GET', p .. 'vtime') or '0')
  redis.call('ZADD', p .. 'tenants', vtime, t)
end
return 1
"""

_POP = """
local p, now, cap, ttl, stride = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local order = redis.call('ZRANGE', p .. 'tenants', 0, -1, 'WITHSCORES')
for i = 1, #order, 2 do
  local t, pass = order[i], tonumber(order[i + 1])
  local running = p .. 'running:' .. t
  redis.call('ZREMRANGEBYSCORE', running, '-inf', now)
  if cap <= 0 or redis.call('ZCARD', running) < cap then
    local users = p .. 'users:' .. t
    local u = redis.call('LPOP', users)
    if u then
      local q = p .. 'q:' .. t .. ':' .. u
      local mid = redis.call('LPOP', q)
      if redis.call('LLEN', q) > 0 then redis.call('RPUSH', users, u) end
      redis.call('HDEL', p .. 'jobs', mid)
      redis.call('ZADD', running, now + ttl, mid)
      local vtime = tonumber(redis.call('GET', p .. 'vtime') or '0')
      if pass > vtime then redis.call('SET', p .. 'vtime', pass) end
      if redis.call('LLEN', users) == 0 then
        redis.call('ZREM', p .. 'tenants', t)
      else
        local weight = tonumber(redis.call('HGET', p .. 'weights', t) or '1')
        redis.call('ZADD', p .. 'tenants', pass + stride / math.max(weight, 1), t)
      end
      return {t, mid}
    end
    redis.call('ZREM', p .. 'tenants', t)
  end
end
return false
"""

_DISCARD = """
local p, mid = ARGV[1], ARGV[2]
local owner = redis.call('HGET', p .. 'jobs', mid)
if not owner then return 0 end
local sep = string.find(owner, ':', 1, true)
local t, u = string.sub(owner, 1, sep - 1), string.sub(owner, sep + 1)
redis.call('HDEL', p .. 'jobs', mid)
local q = p .. 'q:' .. t .. ':' .. u
redis.call('LREM', q, 0, mid)
if redis.call('LLEN', q) == 0 then
  redis.call('LREM', p .. 'users:' .. t, 0, u)
  if redis.call('LLEN', p .. 'users:' .. t) == 0 then redis.call('ZREM', p .. 'tenants', t) end
end
return 1
"""


@dataclass(frozen=True)
class Turn:
    tenant_id: int
    message_id: int


def _script(source: str) -> object:
    # register_script caches the SHA and falls back to EVAL after a Redis restart.
    return sync_client().register_script(source)


def enqueue(*, tenant_id: int, user_id: int, message_id: int, weight: int) -> bool:
    """Puts a turn in its user's queue; False if it already waits there (a requeue is harmless)."""
    script = _script(_ENQUEUE)
    return bool(script(args=[PREFIX, tenant_id, user_id, message_id, max(int(weight), 1)]))  # type: ignore[operator]


def pop_next() -> Turn | None:
    """The fairest waiting turn whose tenant is below its running cap, marked running; or None."""
    script = _script(_POP)
    picked = script(args=[PREFIX, time.time(), settings.CHAT_MAX_RUNNING_PER_TENANT,  # type: ignore[operator]
                          settings.CHAT_STALE_TURN_S, STRIDE])
    if not picked:
        return None
    tenant_id, message_id = picked
    return Turn(tenant_id=int(tenant_id), message_id=int(message_id))


def release(turn: Turn) -> bool:
    """The turn ended (however): frees its running slot. True while turns still wait."""
    client = sync_client()
    client.zrem(f"{PREFIX}running:{turn.tenant_id}", turn.message_id)
    return bool(client.hlen(f"{PREFIX}jobs"))


def renew(turn: Turn) -> None:
    """A running turn's heartbeat keeps its slot: an expiry frees only the slots of dead workers,
    never that of an answer that simply runs longer than CHAT_STALE_TURN_S."""
    sync_client().zadd(f"{PREFIX}running:{turn.tenant_id}",
                       {str(turn.message_id): time.time() + settings.CHAT_STALE_TURN_S}, xx=True)


def discard(message_id: int) -> bool:
    """Removes a turn that still waits (Stop, or its conversation deleted); False if it did not wait."""
    script = _script(_DISCARD)
    return bool(script(args=[PREFIX, message_id]))  # type: ignore[operator]


def is_waiting(message_id: int) -> bool:
    """Whether the turn waits in dispatch: it is not lost, and a sweep must not queue it again."""
    return bool(sync_client().hexists(f"{PREFIX}jobs", message_id))


def queued_message_ids() -> set[int]:
    """Every turn waiting in dispatch (for the stale-turn sweep: these are waiting, not lost)."""
    return {int(mid) for mid in sync_client().hkeys(f"{PREFIX}jobs")}


def running_count(tenant_id: int) -> int:
    client = sync_client()
    key = f"{PREFIX}running:{tenant_id}"
    client.zremrangebyscore(key, "-inf", time.time())
    return int(client.zcard(key))


def queue_position(*, message_id: int) -> int | None:
    """How many waiting turns will start before this one, or None once it no longer waits.

    It replays the scheduler on a snapshot of the queues (running caps aside): the number is
    what the user is told while they wait, so it need not be exact under concurrent changes.
    """
    client = sync_client()
    if not client.hexists(f"{PREFIX}jobs", message_id):
        return None
    # redis-py types replies loosely; with decode_responses these are str (and float scores).
    tenants = cast(list[tuple[str, float]], client.zrange(f"{PREFIX}tenants", 0, -1, withscores=True))
    weights = cast(dict[str, str], client.hgetall(f"{PREFIX}weights"))
    pipe = client.pipeline(transaction=True)
    for tenant, _ in tenants:
        pipe.lrange(f"{PREFIX}users:{tenant}", 0, -1)
    rings = pipe.execute()
    pipe = client.pipeline(transaction=True)
    for (tenant, _), users in zip(tenants, rings, strict=True):
        for user in users:
            pipe.lrange(f"{PREFIX}q:{tenant}:{user}", 0, -1)
    flat = iter(pipe.execute())
    state: dict[str, tuple[float, deque[str], dict[str, deque[str]]]] = {}
    for (tenant, score), users in zip(tenants, rings, strict=True):
        state[tenant] = (score, deque(users), {user: deque(next(flat)) for user in users})
    target = str(message_id)
    ahead = 0
    while state:
        tenant = min(state, key=lambda t: (state[t][0], t))
        score, ring, queues = state[tenant]
        if not ring:
            del state[tenant]
            continue
        user = ring.popleft()
        picked = queues[user].popleft() if queues[user] else None
        if picked == target:
            return ahead
        if queues[user]:
            ring.append(user)
        if picked is not None:
            ahead += 1
        step = STRIDE / max(int(weights.get(tenant, "1")), 1)
        state[tenant] = (score + step, ring, queues)
    return ahead  # changed between the reads: it is about to start


def clear() -> None:
    """Drops every dispatch key (tests)."""
    client = sync_client()
    keys = list(client.scan_iter(f"{PREFIX}*", count=500))
    if keys:
        client.delete(*keys)
