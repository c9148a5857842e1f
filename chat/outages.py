"""Short outages of PostgreSQL or Redis: a turn's writes retry through them instead of failing.

`retry(fn)` calls `fn` until it succeeds or CHAT_OUTAGE_RETRY_S have passed, sleeping with a
capped backoff between tries. Only connection-level errors are retried (a refused query or a
constraint stays an error at once). A PostgreSQL connection that broke is closed before the next
try, so Django opens a new one. `describe(exc)` names the real cause for the user.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)
T = TypeVar("T")

REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError,
                                                  redis.BusyLoadingError)
DB_ERRORS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)
OUTAGE_ERRORS = REDIS_ERRORS + DB_ERRORS
REDIS_DOWN = "The message store (Redis) was unreachable while writing this answer. Please try again."
DB_DOWN = "The database was unreachable while writing this answer. Please try again."


def is_outage(exc: BaseException) -> bool:
    return isinstance(exc, OUTAGE_ERRORS)


def describe(exc: BaseException) -> str:
    """The user-facing reason for a turn that an outage ended."""
    return REDIS_DOWN if isinstance(exc, REDIS_ERRORS) else DB_DOWN


def retry(fn: Callable[[], T], *, what: str, deadline_s: float | None = None) -> T:
    """`fn()`, retried through connection errors for up to `deadline_s` (CHAT_OUTAGE_RETRY_S)."""
    limit = settings.CHAT_OUTAGE_RETRY_S if deadline_s is None else deadline_s
    deadline = time.monotonic() + limit
    pause = 0.2
    while True:
        try:
            return fn()
        except OUTAGE_ERRORS as exc:
            if isinstance(exc, DB_ERRORS) and not connection.in_atomic_block:
                connection.close()  # broken: the next try opens a new one
            if time.monotonic() + pause > deadline:
                raise
            logger.warning("%s: %s; retrying", what, exc)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
