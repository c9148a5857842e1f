from __future__ import annotations

from celery import shared_task

from chat import services


@shared_task(name="chat.tasks.generate_reply")
def generate_reply(*, tenant_id: int, message_id: int) -> None:
    # tenant_id is explicit: every database step of the turn runs in that tenant's context.
    services.message_generate(tenant_id=tenant_id, message_id=message_id)


@shared_task(name="chat.tasks.sweep_stale_turns")
def sweep_stale_turns() -> int:
    return services.turns_sweep_stale()
