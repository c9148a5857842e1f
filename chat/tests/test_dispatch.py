"""Fair dispatch (chat.dispatch): order across tenants and users, weights, the running cap, positions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import actor_for
from chat import dispatch, liveness, services, tasks, turns
from chat.models import Conversation, Message
from tenants.rls import tenant_context

A, B, C = 101, 102, 103  # tenant ids: dispatch itself only sees numbers


def drain() -> list[tuple[int, int]]:
    """Pops every turn (releasing each at once, as if it ran instantly): the order they run in."""
    order = []
    while (turn := dispatch.pop_next()) is not None:
        order.append((turn.tenant_id, turn.message_id))
        dispatch.release(turn)
    return order


@pytest.fixture
def redis_only(settings) -> None:
    settings.CHAT_MAX_RUNNING_PER_TENANT = 0


def test_it_serves_another_tenant_next_even_behind_a_flood(redis_only) -> None:
    for mid in range(1, 61):  # one user of tenant A submits 60 turns at once
        dispatch.enqueue(tenant_id=A, user_id=1, message_id=mid, weight=1)
    assert [t for t, _ in drain()[:1]] == [A]
    for mid in range(1, 61):
        dispatch.enqueue(tenant_id=A, user_id=1, message_id=mid, weight=1)
    dispatch.pop_next()  # A's first turn runs
    dispatch.enqueue(tenant_id=B, user_id=2, message_id=1000, weight=1)
    assert dispatch.queue_position(message_id=1000) == 0
    assert dispatch.pop_next() == dispatch.Turn(tenant_id=B, message_id=1000)


def test_it_alternates_tenants_and_round_robins_users_within_a_tenant(redis_only) -> None:
    for mid in (1, 2, 3):
        dispatch.enqueue(tenant_id=A, user_id=1, message_id=mid, weight=1)
    for mid in (11, 12):
        dispatch.enqueue(tenant_id=A, user_id=2, message_id=mid, weight=1)
    for mid in (21, 22, 23):
        dispatch.enqueue(tenant_id=B, user_id=3, message_id=mid, weight=1)
    assert drain() == [(A, 1), (B, 21), (A, 11), (B, 22), (A, 2), (B, 23), (A, 12), (A, 3)]


def test_it_gives_a_heavier_tenant_its_weighted_share(redis_only) -> None:
    for mid in range(1, 31):
        dispatch.enqueue(tenant_id=A, user_id=1, message_id=mid, weight=1)
        dispatch.enqueue(tenant_id=B, user_id=2, message_id=100 + mid, weight=3)
    first = [t for t, _ in drain()[:20]]
    assert first.count(B) == 15 and first.count(A) == 5


def test_it_lets_no_tenant_bank_credit_while_it_was_idle(redis_only) -> None:
    for mid in range(1, 21):
        dispatch.enqueue(tenant_id=A, user_id=1, message_id=mid, weight=1)
    for _ in range(10):
        dispatch.release(dispatch.pop_next())  # type: ignore[arg-type]
    for mid in (101, 102, 103):  # B arrives late: it alternates with A, it does not take three in a row
        dispatch.enqueue(tenant_id=B, user_id=2, message_id=mid, weight=1)
    assert [t for t, _ in drain()[:6]] == [B, A, B, A, B, A]


def test_it_caps_the_turns_one_tenant_runs_at_once(settings) -> None:
    settings.CHAT_MAX_RUNNING_PER_TENANT = 2
    for mid in range(1, 6):
        dispatch.enqueue(tenant_id=A, user_id=1, message_id=mid, weight=1)
    first, second = dispatch.pop_next(), dispatch.pop_next()
    assert first and second and dispatch.pop_next() is None  # A is at its cap: the ticket ends
    assert dispatch.running_count(A) == 2
    dispatch.enqueue(tenant_id=B, user_id=2, message_id=50, weight=1)
    assert dispatch.pop_next() == dispatch.Turn(tenant_id=B, message_id=50)  # others still get a slot
    assert dispatch.release(first) is True  # turns still wait: the finished one sends a new ticket
    assert dispatch.pop_next() == dispatch.Turn(tenant_id=A, message_id=3)


def test_it_keeps_a_long_turns_running_slot_while_its_heartbeat_beats(settings) -> None:
    settings.CHAT_MAX_RUNNING_PER_TENANT, settings.CHAT_STALE_TURN_S = 1, 0
    for mid in (1, 2):
        dispatch.enqueue(tenant_id=A, user_id=1, message_id=mid, weight=1)
    running = dispatch.pop_next()
    assert running is not None
    settings.CHAT_STALE_TURN_S = 600
    dispatch.renew(running)  # the heartbeat: without it, the slot had expired at once
    assert dispatch.pop_next() is None and dispatch.running_count(A) == 1
    dispatch.renew(dispatch.Turn(tenant_id=A, message_id=99))  # never popped: no slot is made up
    assert dispatch.running_count(A) == 1


def test_it_queues_a_turn_once_and_forgets_a_stopped_one(redis_only) -> None:
    assert dispatch.enqueue(tenant_id=A, user_id=1, message_id=7, weight=1)
    assert not dispatch.enqueue(tenant_id=A, user_id=1, message_id=7, weight=1)
    dispatch.enqueue(tenant_id=A, user_id=1, message_id=8, weight=1)
    assert dispatch.queued_message_ids() == {7, 8} and dispatch.is_waiting(7)
    assert dispatch.discard(7) and not dispatch.discard(7)
    assert drain() == [(A, 8)]
    assert dispatch.queue_position(message_id=8) is None


def test_it_tells_each_waiting_turn_how_many_start_before_it(redis_only) -> None:
    for mid in (1, 2, 3):
        dispatch.enqueue(tenant_id=A, user_id=1, message_id=mid, weight=1)
    dispatch.enqueue(tenant_id=B, user_id=2, message_id=21, weight=1)
    expected = {mid: index for index, (_, mid) in enumerate([(A, 1), (B, 21), (A, 2), (A, 3)])}
    assert {mid: dispatch.queue_position(message_id=mid) for mid in expected} == expected
    assert [mid for _, mid in drain()] == sorted(expected, key=expected.__getitem__)


# -- with the product's own submit, ticket and sweep ---------------------------------------------

@pytest.fixture
def conversation(world) -> Conversation:
    with tenant_context(world.tenant_a.pk):
        return Conversation.objects.create(tenant=world.tenant_a, user=world.alice)


def submit(world, conversation: Conversation, text: str = "hello") -> Message:
    with tenant_context(world.tenant_a.pk):
        _, reply = services.message_submit(
            conversation=conversation, text=text,
            actor=actor_for(user_id=world.alice.pk, role="employee", ip="127.0.0.1"))
    return reply


@pytest.fixture
def worker_heartbeat_stopped() -> Iterator[None]:
    """The ticket starts this process's worker heartbeat, as a worker's would; it is stopped after
    the test, or later sweep tests in this process would see their "dead" worker alive."""
    yield
    liveness.heartbeat_stop(liveness.worker_identity())


def test_it_queues_a_submitted_turn_in_dispatch_and_a_ticket_runs_it(
    world, conversation, django_capture_on_commit_callbacks, worker_heartbeat_stopped
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        reply = submit(world, conversation)
    assert dispatch.is_waiting(reply.pk)
    services_stop = services.message_cancel  # Stop while it waits: it leaves the queue too
    with django_capture_on_commit_callbacks(execute=True), tenant_context(world.tenant_a.pk):
        services_stop(message=reply, actor=actor_for(user_id=world.alice.pk, role="employee"))
    assert not dispatch.is_waiting(reply.pk)

    with django_capture_on_commit_callbacks(execute=True):
        second = submit(world, conversation, "again")
    with tenant_context(world.tenant_a.pk):
        Message.objects.filter(pk=second.pk).update(status=Message.Status.CANCELLED)
    tasks.run_next_turn()  # the ticket pops it; the turn was final already, so it ends at once
    assert not dispatch.is_waiting(second.pk) and dispatch.running_count(world.tenant_a.pk) == 0


def test_it_never_requeues_a_turn_that_only_waits_in_dispatch(
    world, conversation, settings, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        reply = submit(world, conversation)
    long_ago = timezone.now() - timedelta(seconds=settings.CHAT_STALE_TURN_S + 5)
    with tenant_context(world.tenant_a.pk):
        Message.objects.filter(pk=reply.pk).update(updated_at=long_ago)
    with django_capture_on_commit_callbacks() as queued:
        turns.turns_sweep_stale()
    assert queued == []
    with tenant_context(world.tenant_a.pk):
        reply.refresh_from_db()
    assert reply.status == Message.Status.PENDING and "requeued" not in reply.timings


def test_it_lets_the_platform_set_a_tenants_weight_and_audits_it(world) -> None:
    call_command("tenant_scheduling", "--tenant", world.tenant_b.slug, "--weight", "4")
    world.tenant_b.refresh_from_db()
    assert world.tenant_b.schedule_weight == 4
    with tenant_context(world.tenant_b.pk):
        event = AuditEvent.objects.get(action="tenant.scheduling_set")
    assert event.payload == {"weight": 4, "previous": 1}
    with pytest.raises(Exception, match="between 1 and 100"):
        call_command("tenant_scheduling", "--tenant", world.tenant_b.slug, "--weight", "0")
