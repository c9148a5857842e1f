"""The prompt of one turn: system instructions, then the recent history of the conversation."""

from __future__ import annotations

from django.conf import settings

from chat.models import Message


def build_chat_messages(*, assistant_message: Message) -> list[dict[str, str]]:
    history = list(
        Message.objects.filter(
            conversation_id=assistant_message.conversation_id,
            created_at__lte=assistant_message.created_at,
        )
        .exclude(pk=assistant_message.pk)
        .filter(status=Message.Status.DONE)
        .order_by("-created_at", "-id")[: settings.CHAT_HISTORY_MESSAGES]
    )
    history.reverse()
    messages = [{"role": "system", "content": settings.CHAT_SYSTEM_PROMPT}]
    messages += [{"role": m.role, "content": m.content} for m in history if m.content]
    return messages
