"""The prompt of one turn: system instructions, then the recent history of the conversation.

With passages from the conversation's knowledge bases, the question (the last user message)
is sent with instructions and the numbered passages in front of it. The numbers are the ones
stored in `Message.citations`, so the "[n]" the model writes links to the passage it was shown.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.conf import settings

from chat.models import Message
from knowledge.retrieval import Passage

# Each passage is cut to this many characters: k passages must leave a small model's context
# room for the history and the answer.
PASSAGE_MAX_CHARS = 1200

SOURCES_INSTRUCTIONS = (
    "Answer the question using only the numbered sources below. Cite the sources you use like [1] or [2]. "
    "If the sources do not contain the answer, say that you do not know."
)


def build_chat_messages(*, assistant_message: Message,
                        passages: Sequence[Passage] = ()) -> list[dict[str, str]]:
    requested = assistant_message.request.get("messages")
    if requested:
        return _api_messages(requested, passages)
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
    return _with_sources(messages, passages)


def _api_messages(requested: Sequence[dict[str, str]], passages: Sequence[Passage]) -> list[dict[str, str]]:
    """A turn from the OpenAI-compatible API: the request's own messages, as the client sent them.

    The client's system message replaces ours (as with any OpenAI-compatible server); without
    one, ours comes first. Passages go in front of the last user message, as on the chat page.
    """
    messages = [{"role": m["role"], "content": m["content"]} for m in requested]
    if not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": settings.CHAT_SYSTEM_PROMPT})
    return _with_sources(messages, passages)


def _with_sources(messages: list[dict[str, str]], passages: Sequence[Passage]) -> list[dict[str, str]]:
    if passages:
        last_user = max((i for i, m in enumerate(messages) if m["role"] == Message.Role.USER), default=None)
        if last_user is not None:
            messages[last_user] = {"role": "user",
                                   "content": question_with_sources(messages[last_user]["content"], passages)}
    return messages


def question_with_sources(question: str, passages: Sequence[Passage]) -> str:
    sources = "\n\n".join(f"[{n}] {passage.label}\n{cut_text(passage.text)}"
                          for n, passage in enumerate(passages, 1))
    return f"{SOURCES_INSTRUCTIONS}\n\n{sources}\n\nQuestion: {question}"


def cut_text(text: str, limit: int = PASSAGE_MAX_CHARS) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    # At a word boundary when there is one reasonably near the limit.
    cut = text[:limit]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit * 0.8 else cut).rstrip() + " …"
