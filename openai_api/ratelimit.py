"""Rate limits of the /v1 API: a token bucket per API key, and one per client address for wrong keys.

Without them, 300 calls with wrong keys and 300 valid ones were all answered in seconds (issue 12,
finding 9). Each bucket is a Redis hash updated by one Lua script, so every daphne process shares
it and two requests at once cannot both take the last token. Hand-written because the rate-limit
libraries we looked at (django-ratelimit) count fixed windows, which let twice the rate through
at a window's edge, and are synchronous decorators around sync views, where ours are async.
"""

from __future__ import annotations

import math
import time

from django.conf import settings

from deepseek_web.redis_client import sync_client
from openai_api.access import ApiCaller, api_caller_get
from openai_api.wire import ApiError

PREFIX = "dsw:ratelimit:"

# Returns {allowed (0/1), milliseconds until enough tokens are back}. ARGV: rate per second,
# burst, now (s), tokens to take.
_BUCKET = """
local rate, burst, now, take = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local need = math.max(take, 1)
local allowed = 0
if tokens >= need then
  allowed = 1
  tokens = tokens - take
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
if allowed == 1 then return {1, 0} end
return {0, math.ceil((need - tokens) / rate * 1000)}
"""


class RateLimited(ApiError):
    """429 in OpenAI's format; the view adds Retry-After from `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(429, message, type="requests", code="rate_limit_exceeded",
                         headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


def _bucket(key: str, *, per_minute: int, burst: int, take: int) -> int | None:
    """None if allowed, else the seconds until it would be."""
    if per_minute <= 0:
        return None
    script = sync_client().register_script(_BUCKET)
    allowed, wait_ms = script(keys=[PREFIX + key],
                              args=[per_minute / 60, max(burst, 1), time.time(), take])
    return None if int(allowed) else max(1, math.ceil(int(wait_ms) / 1000))


def api_caller_get_limited(authorization: str, client_address: str) -> ApiCaller:
    """`api_caller_get` behind the two buckets.

    A wrong key costs its client address a token, and once the address has none left its wrong
    keys get 429 instead of 401. The key is still looked up first: a valid key behind the same
    address (a shared NAT) keeps working, whatever its neighbours try.
    """
    try:
        caller = api_caller_get(authorization)
    except ApiError as exc:
        if exc.status != 401:
            raise
        wait = _bucket(f"addr:{client_address or 'unknown'}", take=1,
                       per_minute=settings.API_BAD_KEY_RATE_PER_MINUTE, burst=settings.API_BAD_KEY_RATE_BURST)
        if wait is not None:
            raise RateLimited(
                f"Too many requests with a wrong API key from your address. Retry in {wait} s.", wait) from None
        raise
    wait = _bucket(f"key:{caller.key.pk}", take=1, per_minute=settings.API_RATE_PER_MINUTE,
                   burst=settings.API_RATE_BURST)
    if wait is not None:
        raise RateLimited(
            f"Rate limit reached for this API key: {settings.API_RATE_PER_MINUTE} requests per minute. "
            f"Retry in {wait} s.", wait)
    return caller
