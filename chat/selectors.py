from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet
from django.http import Http404

from chat.models import Conversation, ConversationKnowledgeBase, Message
from tenants.models import Tenant


def conversation_list(*, user: User, tenant: Tenant) -> QuerySet[Conversation]:
    # Requests through the OpenAI-compatible API are stored as conversations too; the sidebar hides them.
    return (Conversation.objects.filter(tenant=tenant, user=user, source=Conversation.Source.WEB)
            .order_by("-updated_at"))


def conversation_get_for_user(
    user: User | AnonymousUser, tenant: Tenant | None, conversation_id: int | str
) -> Conversation:
    """The user's conversation in their active tenant, or Http404 (also for other tenants' ids)."""
    if tenant is None or not user.is_authenticated:
        raise Http404("No such conversation.")
    try:
        return Conversation.objects.get(tenant=tenant, user=user, pk=int(conversation_id))
    except (Conversation.DoesNotExist, ValueError, TypeError):
        raise Http404("No such conversation.") from None


def conversation_knowledge_base_ids(*, conversation: Conversation) -> set[int]:
    """The knowledge bases the conversation answers from (as chosen; access is checked per turn)."""
    return set(ConversationKnowledgeBase.objects.filter(conversation=conversation)
               .values_list("knowledge_base_id", flat=True))


def message_find(message_id: int) -> Message | None:
    """A message by id in the current tenant context, or None (deleted, or another tenant's)."""
    return Message.objects.filter(pk=message_id).first()


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    return conversation.messages.order_by("created_at", "id")


def message_get_in_conversation(conversation: Conversation, message_id: int | str) -> Message:
    try:
        return conversation.messages.get(pk=int(message_id))
    # OverflowError: a JSON frame may carry Infinity, which int() refuses so.
    except (Message.DoesNotExist, ValueError, TypeError, OverflowError):
        raise Http404("No such message.") from None
