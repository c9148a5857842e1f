"""Chat's web-side writes: conversations, submitting a turn, and Stop.

The worker side of a turn (generation, the stale-turn sweeps) is `chat.turns`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from audit.services import Actor, audit_record
from chat import dispatch, quotas, streams
from chat.models import DEFAULT_TITLE, Conversation, ConversationKnowledgeBase, Message
from knowledge.selectors import knowledge_base_ids_allowed
from tenants.models import Membership, Tenant
from tenants.rls import tenant_context

logger = logging.getLogger(__name__)


class ChatInputError(ValueError):
    """Bad user input: shown to the user as is; nothing was stored."""


class QuotaExceeded(ChatInputError):
    """A quota is used up: shown to the user as is (the API answers 429); nothing was stored."""


def _check_quotas(conversation: Conversation) -> None:
    tenant = conversation.tenant
    today = quotas.messages_today(tenant=tenant, user_id=conversation.user_id)
    if today.exceeded:
        raise QuotaExceeded(
            f"You have sent {today.used} messages today, your organisation's daily limit of {today.limit}. "
            "It resets at midnight UTC."
        )
    month = quotas.tokens_this_month(tenant=tenant)
    if month.exceeded:
        raise QuotaExceeded(
            f"Your organisation has used its {month.limit:,} generated tokens for this month. "
            "Ask your tenant owner to raise the quota."
        )


class TooManyTurns(QuotaExceeded):
    """Too many turns wait or run at once for this user or tenant (chat.dispatch's caps)."""


def _in_flight(**where: int) -> int:
    return Message.objects.filter(
        role=Message.Role.ASSISTANT, status__in=[Message.Status.PENDING, Message.Status.STREAMING], **where
    ).count()


def _check_in_flight(conversation: Conversation) -> None:
    """Caps what one user, or one tenant, may have waiting or running, so nobody can queue without end.

    A transaction-level advisory lock per user serialises that user's submits, so two sockets
    submitting at once cannot both pass the count.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [0x6473_7701, conversation.user_id])
    user_cap, tenant_cap = settings.CHAT_MAX_IN_FLIGHT_PER_USER, settings.CHAT_MAX_IN_FLIGHT_PER_TENANT
    if user_cap and _in_flight(conversation__user_id=conversation.user_id) >= user_cap:
        raise TooManyTurns(
            f"You already have {user_cap} questions waiting or being answered. "
            "Wait for one to finish (or stop one), then send this again."
        )
    if tenant_cap and _in_flight(tenant_id=conversation.tenant_id) >= tenant_cap:
        raise TooManyTurns(
            f"Your organisation already has {tenant_cap} questions waiting or being answered. "
            "Please try again in a minute."
        )


@transaction.atomic
def conversation_create(*, user: User, tenant: Tenant, actor: Actor,
                        source: str = Conversation.Source.WEB) -> Conversation:
    conversation = Conversation.objects.create(tenant=tenant, user=user, source=source)
    audit_record(
        tenant_id=tenant.pk, actor=actor, action="conversation.create",
        target_type="conversation", target_id=conversation.pk,
        payload={"source": source} if source != Conversation.Source.WEB else None,
    )
    return conversation


@transaction.atomic
def conversation_rename(*, conversation: Conversation, title: str, actor: Actor) -> Conversation:
    title = " ".join(title.split())[:200]
    if not title:
        raise ChatInputError("A title cannot be empty.")
    conversation.title = title
    conversation.save(update_fields=["title", "updated_at"])
    audit_record(
        tenant_id=conversation.tenant_id, actor=actor, action="conversation.rename",
        target_type="conversation", target_id=conversation.pk, payload={"title": title},
    )
    return conversation


@transaction.atomic
def conversation_delete(*, conversation: Conversation, actor: Actor) -> None:
    replies = list(conversation.messages.filter(role=Message.Role.ASSISTANT).only("pk", "created_at"))
    audit_record(
        tenant_id=conversation.tenant_id, actor=actor, action="conversation.delete",
        target_type="conversation", target_id=conversation.pk,
        payload={"title": conversation.title, "messages": conversation.messages.count()},
    )
    conversation.delete()

    def stop_running_turns() -> None:
        for reply in replies:
            streams.cancel_request(reply)

    transaction.on_commit(stop_running_turns)


@transaction.atomic
def conversation_set_knowledge_bases(*, conversation: Conversation, knowledge_base_ids: Sequence[int],
                                     membership: Membership, actor: Actor) -> list[int]:
    """Chooses the knowledge bases the conversation answers from; returns the ids kept.

    Only those the member may use now are kept; the others are dropped without an error (a stale
    page may still offer one whose access was revoked). Each turn checks access again anyway.
    """
    if membership.tenant_id != conversation.tenant_id:
        raise ValueError("The membership is not in the conversation's tenant.")
    requested = sorted(set(knowledge_base_ids))
    chosen = sorted(knowledge_base_ids_allowed(membership, requested))
    ConversationKnowledgeBase.objects.filter(conversation=conversation).delete()
    ConversationKnowledgeBase.objects.bulk_create(
        ConversationKnowledgeBase(tenant_id=conversation.tenant_id, conversation=conversation,
                                  knowledge_base_id=kb_id)
        for kb_id in chosen
    )
    audit_record(
        tenant_id=conversation.tenant_id, actor=actor, action="conversation.knowledge_bases",
        target_type="conversation", target_id=conversation.pk,
        payload={"knowledge_base_ids": chosen, "refused_ids": [i for i in requested if i not in chosen]},
    )
    return chosen


def _validate_text(text: str) -> str:
    text = text.strip()
    if not text:
        raise ChatInputError("Type a message first: an empty message is not sent.")
    # JSON frames may carry what a PostgreSQL text column refuses: say so instead of failing later.
    if "\x00" in text:
        raise ChatInputError("A message may not contain a NUL character.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ChatInputError("A message may not contain an unpaired surrogate.") from None
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    if len(text) > limit:
        raise ChatInputError(f"Message is too long: {len(text)} characters, the limit is {limit}.")
    return text


CLIENT_ID_MAX_CHARS = 64


def message_find_submitted(*, conversation: Conversation, client_id: str) -> tuple[Message, Message] | None:
    """The turn a submit with this client id already stored in the conversation, if any."""
    if not client_id:
        return None
    user_message = Message.objects.filter(conversation=conversation, role=Message.Role.USER,
                                          client_id=client_id).first()
    if user_message is None:
        return None
    reply = Message.objects.filter(reply_to=user_message).order_by("pk").first()
    return (user_message, reply) if reply is not None else None


def message_submit(*, conversation: Conversation, text: str, actor: Actor,
                   client_id: str = "") -> tuple[Message, Message]:
    """Stores the user's message and a pending reply, audits, and queues the turn after commit.

    `client_id` (the page makes one per submit) makes a re-sent submit idempotent: when its first
    copy was stored but the confirmation was lost, the re-send returns that turn, never a second.
    """
    if len(client_id) > CLIENT_ID_MAX_CHARS:
        raise ChatInputError(f"A client id has at most {CLIENT_ID_MAX_CHARS} characters.")
    existing = message_find_submitted(conversation=conversation, client_id=client_id)
    if existing is not None:
        return existing
    try:
        return _message_submit_new(conversation=conversation, text=text, actor=actor, client_id=client_id)
    except IntegrityError:
        # Two copies raced; the unique (conversation, client_id) let one in. Return that one.
        existing = message_find_submitted(conversation=conversation, client_id=client_id)
        if existing is None:
            raise
        return existing


@transaction.atomic
def _message_submit_new(*, conversation: Conversation, text: str, actor: Actor,
                        client_id: str) -> tuple[Message, Message]:
    text = _validate_text(text)
    _check_quotas(conversation)
    _check_in_flight(conversation)
    user_message = Message.objects.create(
        tenant_id=conversation.tenant_id, conversation=conversation,
        role=Message.Role.USER, content=text, status=Message.Status.DONE, client_id=client_id,
    )
    reply = Message.objects.create(
        tenant_id=conversation.tenant_id, conversation=conversation,
        role=Message.Role.ASSISTANT, status=Message.Status.PENDING, reply_to=user_message,
    )
    update_fields = ["updated_at"]
    if conversation.title == DEFAULT_TITLE:
        conversation.title = " ".join(text.split())[:60]
        update_fields.append("title")
    conversation.save(update_fields=update_fields)
    audit_record(
        tenant_id=conversation.tenant_id, actor=actor, action="message.submit",
        target_type="message", target_id=user_message.pk,
        payload={"conversation_id": conversation.pk, "reply_id": reply.pk, "chars": len(text)},
    )
    enqueue_generation(reply)
    return user_message, reply


def enqueue_generation(reply: Message) -> None:
    """Queues the turn once the surrounding transaction commits.

    Fair (the default): into its user's queue in `chat.dispatch`, plus a ticket on the `gpu`
    queue that runs the fairest waiting turn. "fifo" (CHAT_DISPATCH, for the bench's comparison
    only): straight onto the `gpu` queue, first come first served.
    """
    # The task module imports chat.turns, which imports this one.
    from chat.tasks import run_next_turn

    tenant_id, message_id = reply.tenant_id, reply.pk
    if settings.CHAT_DISPATCH == "fifo":
        transaction.on_commit(lambda: _send_fifo(tenant_id, message_id))
        return
    with tenant_context(tenant_id):  # the sweep calls this outside any tenant's context
        user_id = Conversation.objects.filter(pk=reply.conversation_id).values_list("user_id", flat=True).get()
        weight = Tenant.objects.filter(pk=tenant_id).values_list("schedule_weight", flat=True).get()

    def queue() -> None:
        # A Redis outage must not lose the stored question: the row stays pending, and the stale
        # sweep (chat.turns) requeues a turn that waits neither in dispatch nor in the broker.
        try:
            if dispatch.enqueue(tenant_id=tenant_id, user_id=user_id, message_id=message_id, weight=weight):
                run_next_turn.delay()
        except Exception:
            logger.exception("could not queue turn %s; the stale sweep will requeue it", message_id)

    transaction.on_commit(queue)


def _send_fifo(tenant_id: int, message_id: int) -> None:
    from chat.tasks import generate_reply

    try:
        generate_reply.apply_async(kwargs={"tenant_id": tenant_id, "message_id": message_id},
                                   task_id=turn_task_id(message_id))
    except Exception:
        logger.exception("could not queue turn %s; the stale sweep will requeue it", message_id)


def turn_task_id(message_id: int) -> str:
    """A turn's task id names its message, so the sweep can find it in the broker's queue."""
    return f"turn:{message_id}:{uuid.uuid4().hex}"


@transaction.atomic
def message_cancel(*, message: Message, actor: Actor) -> Message:
    """Stop button. A queued turn ends here; a running one is stopped by its worker."""
    if message.role != Message.Role.ASSISTANT or message.is_final:
        return message
    audit_record(
        tenant_id=message.tenant_id, actor=actor, action="message.cancel",
        target_type="message", target_id=message.pk,
    )
    streams.cancel_request(message)
    transaction.on_commit(lambda: dispatch.discard(message.pk))
    # Only a turn no worker has picked up yet is ended here; the conditional update cannot race
    # with the worker's own PENDING -> STREAMING transition.
    if Message.objects.filter(pk=message.pk, status=Message.Status.PENDING).update(
        status=Message.Status.CANCELLED, updated_at=timezone.now()
    ):
        message.refresh_from_db()
        transaction.on_commit(lambda: streams.StreamWriter(message).end(Message.Status.CANCELLED))
    return message
