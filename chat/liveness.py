"""Which gpu workers are alive: a heartbeat key in Redis per worker process, with a short TTL.

Each gpu worker process gets an identity at start-up (`worker_identity()`: Celery hostname plus a
random boot id, so a worker restarted under the same hostname is a *different* owner) and a daemon
thread refreshes `dsw:worker:alive:<identity>` every HEARTBEAT_EVERY_S with a TTL of
CHAT_WORKER_HEARTBEAT_TTL_S. A turn records its owner in `Message.worker`; the stale sweep
(`chat.turns.turns_sweep_stale`) takes a turn whose owner's key has expired for an orphan.

A heartbeat that fails (Redis restarting) is retried on the next tick: the key outlives a few missed
beats, and a longer outage only makes the sweep look at the turn, whose own row and stream writes
retry through it (`chat.outages`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid

import redis
from django.conf import settings

from deepseek_web.redis_client import sync_client

logger = logging.getLogger(__name__)

KEY_PREFIX = "dsw:worker:alive:"
# Set with no TTL each beat: when any gpu worker was last seen (the sweep's "no worker" test).
LAST_SEEN_KEY = "dsw:worker:gpu:last_seen"
HEARTBEAT_EVERY_S = 2.0

_identity: str | None = None
_lock = threading.Lock()
_thread: threading.Thread | None = None
_stopping = threading.Event()


def worker_identity(hostname: str = "") -> str:
    """This process's owner name for turns: `<hostname>/<boot id>`, fixed for the process's life."""
    global _identity
    with _lock:
        if _identity is None:
            import socket

            _identity = f"{hostname or 'worker@' + socket.gethostname()}/{uuid.uuid4().hex[:12]}"
        return _identity


def beat(identity: str) -> None:
    client = sync_client()
    pipe = client.pipeline()
    pipe.set(KEY_PREFIX + identity, "1", ex=settings.CHAT_WORKER_HEARTBEAT_TTL_S)
    pipe.set(LAST_SEEN_KEY, str(time.time()))
    pipe.execute()


def stop(identity: str) -> None:
    """A clean shutdown says so at once, rather than after the TTL."""
    with contextlib.suppress(redis.RedisError):
        sync_client().delete(KEY_PREFIX + identity)


def heartbeat_start(identity: str) -> None:
    """Starts this process's heartbeat thread (once); it beats until the process ends or
    `heartbeat_stop` is called."""
    global _thread

    def loop() -> None:
        while not _stopping.is_set():
            try:
                beat(identity)
            except redis.RedisError as exc:  # an outage: the next tick tries again
                logger.warning("worker heartbeat failed (%s); retrying", exc)
            _stopping.wait(HEARTBEAT_EVERY_S)

    with _lock:
        if _thread is None:
            _stopping.clear()
            _thread = threading.Thread(target=loop, name="dsw-worker-heartbeat", daemon=True)
            _thread.start()


def heartbeat_stop(identity: str) -> None:
    """Ends the heartbeat thread and says at once that this worker is gone (a process that runs
    tasks in-process, as the tests do, and then goes on to judge other workers' liveness)."""
    global _thread
    with _lock:
        thread, _thread = _thread, None
    if thread is not None:
        _stopping.set()
        thread.join()
    stop(identity)


def is_alive(identity: str) -> bool:
    return bool(sync_client().exists(KEY_PREFIX + identity))


def alive_workers() -> set[str]:
    return {str(key)[len(KEY_PREFIX):] for key in sync_client().scan_iter(match=KEY_PREFIX + "*", count=500)}


def seconds_since_any_worker() -> float | None:
    """How long ago any gpu worker last beat; None if none ever did (on this Redis)."""
    value = sync_client().get(LAST_SEEN_KEY)
    return None if value is None else max(0.0, time.time() - float(str(value)))
