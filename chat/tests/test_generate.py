"""The GPU worker's side of a turn: chunks into the Redis Stream, the final row, failures."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.services import actor_for
from chat import liveness, services, streams, turns
from chat.models import Conversation, Message
from tenants.rls import tenant_context


@pytest.fixture
def reply(world, django_capture_on_commit_callbacks) -> Message:
    return pending_reply(world, django_capture_on_commit_callbacks)


def pending_reply(world, django_capture_on_commit_callbacks) -> Message:
    """Alice's question, stored with its pending reply; the task it queues is not run."""
    with tenant_context(world.tenant_a.pk):
        conversation = Conversation.objects.create(tenant=world.tenant_a, user=world.alice)
        with django_capture_on_commit_callbacks(execute=False):  # the test runs the turn itself
            _, reply = services.message_submit(
                conversation=conversation, text="Tell me about our travel policy.",
                actor=actor_for(user_id=world.alice.pk, role="employee"),
            )
    return reply


def refresh(message: Message) -> None:
    with tenant_context(message.tenant_id):
        message.refresh_from_db()


def update(message: Message, **fields: object) -> None:
    with tenant_context(message.tenant_id):
        Message.objects.filter(pk=message.pk).update(**fields)


def test_it_streams_numbered_chunks_and_stores_the_final_answer(reply, use_model, tiny_model_dir) -> None:
    use_model(tiny_model_dir, CHAT_MAX_NEW_TOKENS=24)
    turns.message_generate(tenant_id=reply.tenant_id, message_id=reply.pk)
    refresh(reply)
    assert reply.status == Message.Status.DONE and reply.attempts == 1
    entries = streams.read_all(reply)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert entries[-1].kind == "end" and entries[-1].fields["status"] == "done"
    assert {e.kind for e in entries[:-1]} == {"token"}
    assert "".join(e.fields["text"] for e in entries[:-1]) == reply.content != ""
    assert 0 < reply.token_count <= 24
    assert reply.served_by.startswith("local:") and reply.timings["total_ms"] > 0


def test_it_fails_the_turn_with_the_reason_when_the_model_folder_is_missing(
    reply, use_model, tmp_path, caplog
) -> None:
    missing = tmp_path / "no-such-model"
    use_model(str(missing))
    with caplog.at_level(logging.ERROR):
        turns.message_generate(tenant_id=reply.tenant_id, message_id=reply.pk)
    refresh(reply)
    assert reply.status == Message.Status.FAILED
    assert str(missing) in reply.error and "not available" in reply.error
    assert str(missing) in caplog.text  # the worker logs it too
    end = streams.read_all(reply)[-1]
    assert end.kind == "end" and end.fields["status"] == "failed" and str(missing) in end.fields["error"]
    # The user's question is kept.
    with tenant_context(reply.tenant_id):
        assert Message.objects.get(pk=reply.reply_to_id).content == "Tell me about our travel policy."


def test_it_retries_once_a_turn_whose_worker_died(reply, use_model, tiny_model_dir) -> None:
    use_model(tiny_model_dir, CHAT_MAX_NEW_TOKENS=8)
    # The first worker got two chunks out, then died; the broker redelivers the task.
    update(reply, status=Message.Status.STREAMING, attempts=1)
    writer = streams.StreamWriter(reply)
    writer.token("half an ")
    writer.token("answer")
    turns.message_generate(tenant_id=reply.tenant_id, message_id=reply.pk)
    refresh(reply)
    assert reply.status == Message.Status.DONE and reply.attempts == 2
    kinds = [e.kind for e in streams.read_all(reply)]
    assert kinds[:3] == ["token", "token", "reset"] and kinds[-1] == "end"
    assert "half an" not in reply.content


def test_it_fails_a_turn_whose_worker_died_twice(reply) -> None:
    update(reply, status=Message.Status.STREAMING, attempts=2)
    turns.message_generate(tenant_id=reply.tenant_id, message_id=reply.pk)
    refresh(reply)
    assert reply.status == Message.Status.FAILED and "stopped twice" in reply.error


def test_it_ends_as_cancelled_when_stop_came_before_the_worker(reply, use_model, tiny_model_dir) -> None:
    use_model(tiny_model_dir)
    streams.cancel_request(reply)  # Stop pressed while the worker was picking the turn up
    turns.message_generate(tenant_id=reply.tenant_id, message_id=reply.pk)
    refresh(reply)
    assert reply.status == Message.Status.CANCELLED


def test_it_sweeps_a_turn_whose_worker_vanished(reply, settings, django_capture_on_commit_callbacks) -> None:
    update(
        reply, status=Message.Status.STREAMING,
        updated_at=timezone.now() - timedelta(seconds=settings.CHAT_STALE_TURN_S + 5),
    )
    with django_capture_on_commit_callbacks(execute=True) as announced:
        assert turns.turns_sweep_stale() == 1
    assert len(announced) == 1  # the stream's end goes out only once the failure is committed
    refresh(reply)
    assert reply.status == Message.Status.FAILED and reply.error == turns.WORKER_DIED
    assert streams.read_all(reply)[-1].fields["status"] == "failed"


def test_it_queues_a_lost_turn_once_more_then_fails_it_with_a_reason(
    reply, settings, django_capture_on_commit_callbacks
) -> None:
    liveness.beat("test-worker")  # a worker is alive: the turn was lost, not left without one
    long_ago = timezone.now() - timedelta(seconds=settings.CHAT_STALE_TURN_S + 5)
    update(reply, updated_at=long_ago)  # queued, and no worker ever started it
    with django_capture_on_commit_callbacks() as queued:
        turns.turns_sweep_stale()
    assert len(queued) == 1  # generate_reply sent again
    refresh(reply)
    assert reply.status == Message.Status.PENDING and reply.timings["requeued"] is True

    update(reply, updated_at=long_ago)  # the second copy was lost too
    with django_capture_on_commit_callbacks(execute=True):
        turns.turns_sweep_stale()
    refresh(reply)
    assert reply.status == Message.Status.FAILED and reply.error == turns.NEVER_STARTED
    assert streams.read_all(reply)[-1].fields["status"] == "failed"
