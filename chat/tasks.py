"""Chat's Celery tasks: thin, they take ids and call `chat.turns`."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from chat import dispatch, liveness, turns


@shared_task(name="chat.tasks.generate_reply", bind=True)
def generate_reply(self: Any, *, tenant_id: int, message_id: int) -> None:
    # tenant_id is explicit: every database step of the turn runs in that tenant's context.
    # The owner recorded on the turn is this process (hostname + boot id), kept alive by its heartbeat.
    worker = liveness.worker_identity(str(self.request.hostname or ""))
    liveness.heartbeat_start(worker)
    turns.message_generate(tenant_id=tenant_id, message_id=message_id, worker=worker)


@shared_task(name="chat.tasks.run_next_turn", bind=True)
def run_next_turn(self: Any) -> None:
    """A ticket: runs the fairest waiting turn (chat.dispatch), if any tenant may run one now."""
    turn = dispatch.pop_next()
    if turn is None:
        return  # nothing waits, or every waiting tenant is at its running cap
    worker = liveness.worker_identity(str(self.request.hostname or ""))
    liveness.heartbeat_start(worker)
    try:
        turns.message_generate(tenant_id=turn.tenant_id, message_id=turn.message_id, worker=worker)
    finally:
        # A tenant that was at its cap may run its next turn now; one ticket per freed slot.
        if dispatch.release(turn):
            run_next_turn.delay()


@shared_task(name="chat.tasks.sweep_stale_turns")
def sweep_stale_turns() -> int:
    return turns.turns_sweep_stale()
