"""Chat's Celery tasks: thin, they take ids and call `chat.turns`."""

from __future__ import annotations

from celery import shared_task

from chat import turns


@shared_task(name="chat.tasks.generate_reply")
def generate_reply(*, tenant_id: int, message_id: int) -> None:
    # tenant_id is explicit: every database step of the turn runs in that tenant's context.
    turns.message_generate(tenant_id=tenant_id, message_id=message_id)


@shared_task(name="chat.tasks.sweep_stale_turns")
def sweep_stale_turns() -> int:
    return turns.turns_sweep_stale()
