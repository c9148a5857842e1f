"""Each turn has an owning worker process; a dead owner's turn is redelivered and completed once,
a live owner's turn is never taken, and the sweep tells waiting, lost and workerless turns apart
(issue 12, findings 13 and 15)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from chat import liveness, services, streams, turns
from chat.models import Message
from chat.tests.test_generate import pending_reply, refresh, update
from deepseek_web.redis_client import sync_client


@pytest.fixture
def reply(world, django_capture_on_commit_callbacks) -> Message:
    return pending_reply(world, django_capture_on_commit_callbacks)


@pytest.fixture(autouse=True)
def _no_workers_alive() -> None:
    """Each test decides which workers are alive."""
    client = sync_client()
    for key in client.scan_iter(match=liveness.KEY_PREFIX + "*"):
        client.delete(key)
    client.delete(liveness.LAST_SEEN_KEY, "gpu")


def stream_text_after_last_reset(message: Message) -> str:
    entries = streams.read_all(message)
    resets = [i for i, e in enumerate(entries) if e.kind == "reset"]
    return "".join(e.fields.get("text", "") for e in entries[(resets[-1] + 1) if resets else 0:] if e.kind == "token")


def test_it_records_the_owning_worker(reply, use_model, tiny_model_dir) -> None:
    use_model(tiny_model_dir, CHAT_MAX_NEW_TOKENS=4)
    turns.message_generate(tenant_id=reply.tenant_id, message_id=reply.pk, worker="gpu@a/boot1")
    refresh(reply)
    assert reply.status == Message.Status.DONE and reply.worker == "gpu@a/boot1"


def test_it_drops_a_second_delivery_while_the_owner_is_alive(reply) -> None:
    update(reply, status=Message.Status.STREAMING, attempts=1, worker="gpu@a/boot1")
    liveness.beat("gpu@a/boot1")
    turns.message_generate(tenant_id=reply.tenant_id, message_id=reply.pk, worker="gpu@a/boot2")
    refresh(reply)
    assert reply.status == Message.Status.STREAMING and reply.worker == "gpu@a/boot1" and reply.attempts == 1
    assert streams.read_all(reply) == []  # nothing written twice
    # ...and the sweep leaves it alone, however long since its row was touched.
    update(reply, updated_at=timezone.now() - timedelta(hours=1))
    assert turns.turns_sweep_stale() == 0


def test_it_redelivers_a_dead_owners_turn_and_completes_it_once(
    reply, use_model, tiny_model_dir, settings, django_capture_on_commit_callbacks
) -> None:
    use_model(tiny_model_dir, CHAT_MAX_NEW_TOKENS=6)
    # gpu@a (boot1) streamed two chunks, then was killed; a new process of the same name runs now.
    update(reply, status=Message.Status.STREAMING, attempts=1, worker="gpu@a/boot1",
           updated_at=timezone.now() - timedelta(seconds=settings.CHAT_ORPHAN_GRACE_S + 1))
    writer = streams.StreamWriter(reply)
    writer.token("Half an ")
    writer.token("answer")
    liveness.beat("gpu@a/boot2")
    with django_capture_on_commit_callbacks(execute=False) as queued:
        assert turns.turns_sweep_stale() == 1
    assert len(queued) == 1  # generate_reply sent again
    refresh(reply)
    assert reply.status == Message.Status.PENDING

    turns.message_generate(tenant_id=reply.tenant_id, message_id=reply.pk, worker="gpu@a/boot2")
    refresh(reply)
    assert reply.status == Message.Status.DONE and reply.attempts == 2 and reply.worker == "gpu@a/boot2"
    entries = streams.read_all(reply)
    assert [e.kind for e in entries].count("end") == 1 and [e.kind for e in entries].count("reset") == 1
    assert stream_text_after_last_reset(reply) == reply.content != ""
    # A late copy of the task (the broker's own redelivery) changes nothing.
    turns.message_generate(tenant_id=reply.tenant_id, message_id=reply.pk, worker="gpu@a/boot3")
    assert streams.read_all(reply) == entries


def test_it_fails_a_turn_whose_owner_died_twice(reply, settings, django_capture_on_commit_callbacks) -> None:
    update(reply, status=Message.Status.STREAMING, attempts=turns.MAX_ATTEMPTS, worker="gpu@a/boot1",
           updated_at=timezone.now() - timedelta(seconds=settings.CHAT_ORPHAN_GRACE_S + 1))
    with django_capture_on_commit_callbacks(execute=True):
        assert turns.turns_sweep_stale() == 1
    refresh(reply)
    assert reply.status == Message.Status.FAILED and reply.error == turns.WORKER_DIED
    assert streams.read_all(reply)[-1].fields["status"] == "failed"


def test_it_leaves_a_turn_that_only_waits_in_the_queue(reply, settings, django_capture_on_commit_callbacks) -> None:
    liveness.beat("gpu@a/boot1")  # a worker is alive, just busy
    with django_capture_on_commit_callbacks(execute=True):
        services.enqueue_generation(reply)  # the real task, into the broker's gpu queue
    assert turns.turn_is_waiting(reply)
    update(reply, updated_at=timezone.now() - timedelta(seconds=settings.CHAT_PENDING_CHECK_S + 1))
    with django_capture_on_commit_callbacks(execute=False) as queued:
        assert turns.turns_sweep_stale() == 0
    assert queued == []  # not queued a second time
    refresh(reply)
    assert reply.status == Message.Status.PENDING and "requeued" not in reply.timings


def test_it_tells_the_user_when_no_model_worker_is_available(
    reply, settings, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        services.enqueue_generation(reply)
    sync_client().set(liveness.LAST_SEEN_KEY, str(time.time() - settings.CHAT_NO_WORKER_S - 1))
    update(reply, created_at=timezone.now() - timedelta(seconds=settings.CHAT_NO_WORKER_S + 1),
           updated_at=timezone.now() - timedelta(seconds=settings.CHAT_PENDING_CHECK_S + 1))
    with django_capture_on_commit_callbacks(execute=False) as announce:
        assert turns.turns_sweep_stale() == 1
        refresh(reply)
        # Saved first; the stream's end waits for the commit.
        assert reply.status == Message.Status.FAILED and reply.error == turns.NO_WORKER
        assert streams.read_all(reply) == []
    announce[0]()
    end = streams.read_all(reply)[-1]
    assert end.kind == "end" and end.fields == {"status": "failed", "error": turns.NO_WORKER}


def test_it_saves_an_answer_parked_while_the_database_was_down(reply) -> None:
    # The worker streamed the whole answer, but the database refused the final save through the
    # whole outage: the answer was parked in Redis. The next sweep stores it, then ends the stream.
    update(reply, status=Message.Status.STREAMING, attempts=1, worker="gpu@a/boot1")
    liveness.beat("gpu@a/boot1")
    refresh(reply)
    reply.content, reply.token_count = "The whole answer.", 4
    turns._park(reply, {"status": "done", "error": "", "content": reply.content, "token_count": 4,
                        "timings": {}, "served_by": "local:tiny"}, ConnectionError("database down"))
    assert turns.turns_sweep_stale() == 1
    refresh(reply)
    assert reply.status == Message.Status.DONE and reply.content == "The whole answer."
    assert streams.read_all(reply)[-1].fields["status"] == "done"
    assert list(sync_client().scan_iter(match=turns.PARKED_PREFIX + "*")) == []


def test_it_refuses_the_prefork_pool_for_the_gpu_worker() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "deepseek_web", "worker", "-Q", "gpu", "-P", "prefork"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "-P threads or -P solo" in result.stderr
