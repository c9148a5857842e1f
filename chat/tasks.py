"""Chat's Celery tasks: thin, they take ids and call `chat.turns`."""

from __future__ import annotations

from celery import shared_task

from chat import dispatch, turns


@shared_task(name="chat.tasks.generate_reply")
def generate_reply(*, tenant_id: int, message_id: int) -> None:
    # tenant_id is explicit: every database step of the turn runs in that tenant's context.
    turns.message_generate(tenant_id=tenant_id, message_id=message_id)


@shared_task(name="chat.tasks.run_next_turn")
def run_next_turn() -> None:
    """A ticket: runs the fairest waiting turn (chat.dispatch), if any tenant may run one now."""
    turn = dispatch.pop_next()
    if turn is None:
        return  # nothing waits, or every waiting tenant is at its running cap
    try:
        turns.message_generate(tenant_id=turn.tenant_id, message_id=turn.message_id)
    finally:
        # A tenant that was at its cap may run its next turn now; one ticket per freed slot.
        if dispatch.release(turn):
            run_next_turn.delay()


@shared_task(name="chat.tasks.sweep_stale_turns")
def sweep_stale_turns() -> int:
    return turns.turns_sweep_stale()
