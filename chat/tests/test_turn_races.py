"""Two races of a running turn, each made deterministic by holding the local engine's thread.

`Engine.call` runs a function on the static batcher's own thread; while that function waits on an
event, the engine produces no token for anybody, exactly as when a turn queues behind others. The
turn itself runs on a worker thread, as on the `gpu` worker, so the tests use committed rows.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

import pytest
from django.db import connection

from chat import streams, turns
from chat.models import Message
from chat.tests.test_generate import pending_reply
from tenants.rls import tenant_context

# How long a test waits for something that should happen at once. Not a measurement: only a bound,
# so that a broken turn fails the test instead of hanging it.
PATIENCE_S = 60.0


@pytest.fixture
def reply(transactional_db: None, world, django_capture_on_commit_callbacks) -> Message:
    return pending_reply(world, django_capture_on_commit_callbacks)


def stored(message: Message) -> Message:
    with tenant_context(message.tenant_id):
        return Message.objects.get(pk=message.pk)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.02)


@contextmanager
def engine_held() -> Iterator[threading.Event]:
    """Holds the engine's thread until the yielded event is set (at the latest on exit)."""
    from inference import runtime

    engine = runtime.get_engine()
    assert engine.batching == "static"  # Engine.call runs on the engine's own thread only there
    release = threading.Event()
    holder = threading.Thread(target=engine.call, args=(release.wait,), daemon=True)
    holder.start()
    try:
        yield release
    finally:
        release.set()
        holder.join(PATIENCE_S)


@contextmanager
def turn_running(message: Message) -> Iterator[threading.Thread]:
    """Runs the turn on a worker thread, as the `gpu` worker does; the turn must not raise.

    The turn's owner is a worker of its own with no heartbeat, as a worker that died would be: this
    process's identity beats whenever an earlier test started the session's in-process gpu worker.
    """
    errors: list[BaseException] = []
    owner = f"races@test/{uuid.uuid4().hex[:12]}"

    def run() -> None:
        try:
            turns.message_generate(tenant_id=message.tenant_id, message_id=message.pk, worker=owner)
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)
        finally:
            connection.close()  # as Celery does after a task: the test database can then be dropped

    turn = threading.Thread(target=run, daemon=True)
    turn.start()
    try:
        yield turn
    finally:
        turn.join(PATIENCE_S)
    assert errors == [], f"the turn raised: {errors!r}"


def test_it_checks_stop_and_beats_while_the_local_engine_still_queues_the_turn(
    reply, use_model, tiny_model_dir, monkeypatch
) -> None:
    use_model(tiny_model_dir, MODEL_BATCHING="static", CHAT_MAX_NEW_TOKENS=16)
    monkeypatch.setattr(turns, "HEARTBEAT_INTERVAL_S", 0.05)
    with engine_held() as release, turn_running(reply) as turn:
        wait_until(lambda: stored(reply).status == Message.Status.STREAMING, "the worker took the turn")
        started: datetime = stored(reply).updated_at
        # No token can come while the engine is held: only the heartbeat touches the row.
        wait_until(lambda: stored(reply).updated_at > started, "a heartbeat while the turn is queued")

        streams.cancel_request(reply)  # the Stop button
        turn.join(PATIENCE_S)
        assert not turn.is_alive(), "Stop was not noticed while the engine queued the turn"
        assert not release.is_set()  # it ended while the engine was still held
    final = stored(reply)
    assert final.status == Message.Status.CANCELLED and final.content == ""
    assert streams.read_all(reply)[-1].fields["status"] == "cancelled"


@pytest.mark.parametrize("late_worker", ["writes its answer", "is stopped before any text"])
def test_it_never_overwrites_a_turn_the_stale_sweeper_already_failed(
    reply, use_model, tiny_model_dir, monkeypatch, settings, late_worker
) -> None:
    use_model(tiny_model_dir, MODEL_BATCHING="static", CHAT_MAX_NEW_TOKENS=8)
    # No heartbeat during the test: only the final write can tell that the turn was taken away.
    monkeypatch.setattr(turns, "HEARTBEAT_INTERVAL_S", 3600.0)
    with engine_held() as release, turn_running(reply) as turn:
        wait_until(lambda: stored(reply).status == Message.Status.STREAMING, "the worker took the turn")
        # The worker looks dead to the sweeper (no heartbeat runs in this test, and every streaming
        # turn counts as untouched now), and the turn has had its attempts: the sweep fails it.
        settings.CHAT_ORPHAN_GRACE_S = -3600
        monkeypatch.setattr(turns, "MAX_ATTEMPTS", 1)
        assert turns.turns_sweep_stale() == 1
        # The slow worker was alive after all: it now ends its turn its own way.
        if late_worker == "writes its answer":
            release.set()
        else:
            streams.cancel_request(reply)
        turn.join(PATIENCE_S)
        assert not turn.is_alive()
    final = stored(reply)
    assert final.status == Message.Status.FAILED and final.error == turns.WORKER_DIED
    ends = [e for e in streams.read_all(reply) if e.kind == "end"]
    assert [e.fields["status"] for e in ends] == ["failed"]  # the sweeper's end, and no second one
