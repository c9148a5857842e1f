"""Chat writes: conversations, submitting a turn, cancelling it, and running it on the GPU worker."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from audit.services import SYSTEM, Actor, actor_for, audit_record
from chat import streams
from chat.models import DEFAULT_TITLE, Conversation, ConversationKnowledgeBase, Message
from chat.prompts import build_chat_messages, cut_text
from knowledge.retrieval import Passage
from knowledge.selectors import knowledge_base_ids_allowed
from tenants.models import Membership, Tenant
from tenants.rls import tenant_context

if TYPE_CHECKING:
    from inference.engine import SamplingParams

logger = logging.getLogger(__name__)

# A turn whose worker died is started at most this many times in all.
MAX_ATTEMPTS = 2
# How often the worker checks the Stop flag and touches the row while streaming.
CONTROL_INTERVAL_S = 0.2
HEARTBEAT_INTERVAL_S = 5.0
WORKER_DIED = "The model worker stopped while writing this answer. Please try again."
NEVER_STARTED = "No model worker picked this question up. Please try again."
# How much of a cited passage is stored with the answer (the Sources list shows it on hover).
SNIPPET_CHARS = 240


class ChatInputError(ValueError):
    """Bad user input: shown to the user as is; nothing was stored."""


class QuotaExceeded(ChatInputError):
    """A quota is used up: shown to the user as is (the API answers 429); nothing was stored."""


def _check_quotas(conversation: Conversation) -> None:
    from tenants import quotas

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
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    if len(text) > limit:
        raise ChatInputError(f"Message is too long: {len(text)} characters, the limit is {limit}.")
    return text


@transaction.atomic
def message_submit(*, conversation: Conversation, text: str, actor: Actor) -> tuple[Message, Message]:
    """Stores the user's message and a pending reply, audits, and queues the turn after commit."""
    text = _validate_text(text)
    _check_quotas(conversation)
    user_message = Message.objects.create(
        tenant_id=conversation.tenant_id, conversation=conversation,
        role=Message.Role.USER, content=text, status=Message.Status.DONE,
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
    _enqueue_generation(reply)
    return user_message, reply


def _enqueue_generation(reply: Message) -> None:
    from chat.tasks import generate_reply

    tenant_id, message_id = reply.tenant_id, reply.pk
    transaction.on_commit(lambda: generate_reply.delay(tenant_id=tenant_id, message_id=message_id))


def _finish(message: Message, writer: streams.StreamWriter, status: str, error: str = "") -> None:
    message.status = status
    message.error = error
    with tenant_context(message.tenant_id):
        message.save(update_fields=["status", "error", "content", "token_count", "timings", "backend", "updated_at"])
    writer.end(status, error)


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
    # Only a turn no worker has picked up yet is ended here; the conditional update cannot race
    # with the worker's own PENDING -> STREAMING transition.
    if Message.objects.filter(pk=message.pk, status=Message.Status.PENDING).update(
        status=Message.Status.CANCELLED, updated_at=timezone.now()
    ):
        message.refresh_from_db()
        transaction.on_commit(lambda: streams.StreamWriter(message).end(Message.Status.CANCELLED))
    return message


def message_generate(*, tenant_id: int, message_id: int) -> None:
    """Runs one turn on the GPU worker: prompt, engine, numbered chunks, final row.

    No transaction stays open while the model writes: each database step is its own short
    transaction in the tenant's context, so progress is visible to others as it happens.
    """
    from inference import routing, runtime

    started = time.monotonic()
    with tenant_context(tenant_id):
        message = Message.objects.select_for_update().filter(pk=message_id).first()
        if message is None or message.is_final:
            return  # deleted, cancelled while queued, or already finished
        writer = streams.StreamWriter(message)
        if message.status == Message.Status.STREAMING:
            # A worker died mid-turn and the broker redelivered it.
            if message.attempts >= MAX_ATTEMPTS:
                message.error = "The model worker stopped twice while writing this answer. Please try again."
                _finish(message, writer, Message.Status.FAILED, message.error)
                return
            writer.reset()
        message.status = Message.Status.STREAMING
        message.attempts += 1
        message.content = ""
        message.citations = []
        message.save(update_fields=["status", "attempts", "content", "citations", "updated_at"])
    queued_ms = (timezone.now() - message.created_at).total_seconds() * 1000

    if streams.is_cancel_requested(message):
        _finish(message, writer, Message.Status.CANCELLED)
        return
    passages, retrieval_timings = _turn_passages(message)
    message.timings = {**message.timings, **retrieval_timings}
    try:
        with tenant_context(tenant_id):
            history = build_chat_messages(assistant_message=message, passages=passages)
            sensitive = routing.sensitivity_reason(tenant_id=tenant_id,
                                                   knowledge_base_ids=_turn_knowledge_base_ids(message))
        # The local engine or a remote backend (inference.routing); both stream the same Deltas.
        control = _TurnControl(message)
        route = routing.chat_route(messages=history, params=_sampling_params(message), sensitive=sensitive,
                                   should_stop=control)
        handle = route.handle
    except Exception as exc:  # noqa: BLE001 - any load/prompt failure ends this turn, not the worker
        logger.exception("turn %s failed before generation", message.pk)
        _finish(message, writer, Message.Status.FAILED, runtime.describe_error(exc))
        return
    message.backend = route.backend

    parts: list[str] = []
    first_token_at: float | None = None
    status, error = Message.Status.DONE, ""
    finish_reason: str | None = None
    for delta in handle:
        if delta.text:
            if first_token_at is None:
                first_token_at = time.monotonic()
            parts.append(delta.text)
            writer.token(delta.text)
        message.token_count = delta.token_count
        if delta.finished:
            finish_reason = delta.finish_reason
            if delta.finish_reason == "cancelled":
                status = Message.Status.CANCELLED
            elif delta.finish_reason == "error":
                status, error = Message.Status.FAILED, f"The model failed while writing: {delta.error}"
            break
        if control():
            handle.cancel()  # idempotent: the Stop flag stays set

    finished = time.monotonic()
    routing.local_latency_record(route)
    message.content = "".join(parts)
    message.timings = {
        "queued_ms": round(queued_ms, 1),
        "ttft_ms": round(((first_token_at or finished) - started) * 1000, 1),
        # The backend's own share: from submit (or, remote, from the request that answered) to its first token.
        "engine_ttft_ms": round((handle.ttft_s or 0.0) * 1000, 1),
        "total_ms": round((finished - started) * 1000, 1),
        "tokens_per_s": round(message.token_count / max(finished - (first_token_at or started), 1e-6), 2),
        # Usage as the engine counted it (the OpenAI-compatible API reports both counts).
        "prompt_tokens": route.prompt_tokens,
        "finish_reason": finish_reason,
        # Which backends were tried for this turn, and why each was skipped or failed.
        "routing": route.timings(),
        **retrieval_timings,
    }
    if error:
        logger.error("turn %s failed: %s", message.pk, error)
    _finish(message, writer, status, error)


# The sampling settings an API request may choose (SamplingParams' field names).
REQUEST_SAMPLING_FIELDS = ("max_new_tokens", "temperature", "top_p", "stop")


def _sampling_params(message: Message) -> SamplingParams:
    """The worker's defaults, with what an API request chose (validated by the API view)."""
    from inference import runtime

    params = runtime.sampling_params()
    chosen = {k: v for k, v in (message.request.get("sampling") or {}).items() if k in REQUEST_SAMPLING_FIELDS}
    if "stop" in chosen:
        chosen["stop"] = tuple(chosen["stop"])
    return dataclasses.replace(params, **chosen)


class _TurnControl:
    """Polled while a turn runs: while routing waits for a remote backend's first token (up to its
    first-token timeout, for each backend tried), and after every delta. It reads the Stop flag
    at most every CONTROL_INTERVAL_S, and touches the row every HEARTBEAT_INTERVAL_S, so the
    stale-turn sweeper does not take a long wait, or a long answer, for a dead worker."""

    def __init__(self, message: Message) -> None:
        self.message = message
        self.stop = False
        self.last_control = 0.0
        self.last_beat = time.monotonic()

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last_control >= CONTROL_INTERVAL_S:
            self.last_control = now
            self.stop = streams.is_cancel_requested(self.message)
        if now - self.last_beat >= HEARTBEAT_INTERVAL_S:
            self.last_beat = now
            with tenant_context(self.message.tenant_id):
                Message.objects.filter(pk=self.message.pk).update(updated_at=timezone.now())
        return self.stop


def _turn_knowledge_base_ids(message: Message) -> list[int]:
    """The knowledge bases whose text may be in this turn's prompt: those chosen now, and those
    that earlier answers in the conversation cited (their text is in the history)."""
    ids = set(ConversationKnowledgeBase.objects.filter(conversation_id=message.conversation_id)
              .values_list("knowledge_base_id", flat=True))
    for citations in (Message.objects.filter(conversation_id=message.conversation_id).exclude(citations=[])
                      .values_list("citations", flat=True)):
        ids.update(int(c["knowledge_base_id"]) for c in citations
                   if isinstance(c, dict) and c.get("knowledge_base_id") is not None)
    return sorted(ids)


def _turn_passages(message: Message) -> tuple[list[Passage], dict[str, Any]]:
    """The passages for this turn from the conversation's knowledge bases, and the step's timings.

    Never raises: a failed search must not lose the turn, which is then answered without
    passages and says so in its timings.
    """
    started = time.monotonic()
    try:
        passages, timings = _passages_retrieve(message)
    except Exception as exc:  # noqa: BLE001 - the answer goes on without passages
        logger.exception("retrieval for turn %s failed; answering without passages", message.pk)
        message.citations = []
        return [], {"retrieve_ms": round((time.monotonic() - started) * 1000, 1),
                    "retrieval_error": f"{type(exc).__name__}: {exc}"[:300]}
    if passages is None:
        return [], {}
    return passages, {"retrieve_ms": round((time.monotonic() - started) * 1000, 1), **timings}


def _passages_retrieve(message: Message) -> tuple[list[Passage] | None, dict[str, Any]]:
    """Searches the chosen knowledge bases the conversation's owner may still use, and records it.

    None when there was nothing to search. Access is checked again here, at answer time: a
    knowledge base chosen earlier whose access was revoked since is silently left out.
    """
    from inference import runtime
    from knowledge.retrieval import retrieve
    from knowledge.selectors import embedding_model_id

    tenant_id = message.tenant_id
    with tenant_context(tenant_id):
        chosen = list(ConversationKnowledgeBase.objects.filter(conversation_id=message.conversation_id)
                      .order_by("knowledge_base_id").values_list("knowledge_base_id", flat=True))
        if not chosen:
            return None, {}
        conversation = Conversation.objects.select_related("user").get(pk=message.conversation_id)
        membership = Membership.objects.filter(tenant_id=tenant_id, user_id=conversation.user_id,
                                               is_active=True).first()
        allowed = (knowledge_base_ids_allowed(membership, chosen)
                   if membership is not None and conversation.user.is_active else [])
        question = ""
        if message.reply_to_id is not None:
            asked = Message.objects.filter(pk=message.reply_to_id).values_list("content", flat=True).first()
            question = asked or ""
    if not allowed or membership is None or not question.strip():
        return None, {}

    t0 = time.monotonic()
    embedding = runtime.get_embedder().embed([question])[0]
    embed_ms = (time.monotonic() - t0) * 1000
    with tenant_context(tenant_id):
        passages = retrieve(tenant_id=tenant_id, knowledge_base_ids=sorted(allowed), query=question,
                            embedding=embedding, model=embedding_model_id())
        citations = [
            {"n": n, "chunk_id": p.chunk_id, "document_id": p.document_id,
             "knowledge_base_id": p.knowledge_base_id, "document_title": p.document_title,
             "heading": p.heading, "page": p.page,
             "snippet": cut_text(p.text, SNIPPET_CHARS)}
            for n, p in enumerate(passages, 1)
        ]
        Message.objects.filter(pk=message.pk).update(citations=citations, updated_at=timezone.now())
        # Data access is recorded in the same transaction as the citations: if the audit write
        # fails, both roll back and the answer is written without the passages.
        audit_record(
            tenant_id=tenant_id,
            actor=actor_for(user_id=conversation.user_id, role=membership.role,
                            name=conversation.user.get_username()),
            action="message.retrieve", target_type="message", target_id=message.pk,
            payload={
                "conversation_id": conversation.pk,
                "chunk_ids": [p.chunk_id for p in passages],
                "document_ids": list(dict.fromkeys(p.document_id for p in passages)),
                "knowledge_base_ids": sorted(allowed),
                "query_chars": len(question),
            },
        )
    message.citations = citations
    return passages, {"embed_ms": round(embed_ms, 1)}


def turns_sweep_stale() -> int:
    """Ends turns whose worker died: no heartbeat for CHAT_STALE_TURN_S. Runs on beat, per tenant."""
    return sum(_sweep_tenant(tenant_id) for tenant_id in Tenant.objects.values_list("id", flat=True))


def _sweep_tenant(tenant_id: int) -> int:
    cutoff = timezone.now() - timedelta(seconds=settings.CHAT_STALE_TURN_S)
    with tenant_context(tenant_id):
        stale = list(Message.objects.filter(status=Message.Status.STREAMING, updated_at__lt=cutoff))
        waiting = list(Message.objects.filter(status=Message.Status.PENDING, updated_at__lt=cutoff))
    for message in waiting:
        with tenant_context(tenant_id):
            _requeue_or_fail(message)
    count = 0
    for message in stale:
        with tenant_context(tenant_id):
            updated = Message.objects.filter(pk=message.pk, status=Message.Status.STREAMING,
                                             updated_at__lt=cutoff).update(
                status=Message.Status.FAILED,
                error=WORKER_DIED,
                updated_at=timezone.now(),
            )
            if updated:
                audit_record(tenant_id=message.tenant_id, actor=SYSTEM, action="message.fail_stale",
                             target_type="message", target_id=message.pk)
                streams.StreamWriter(message).end(Message.Status.FAILED, WORKER_DIED)
                count += 1
    return count


def _requeue_or_fail(message: Message) -> None:
    """A turn still queued long after it was asked: the broker lost it, or no worker runs.

    It is queued once more; if that copy is lost too, the turn ends as failed, so the user sees
    a clear reason instead of a question that waits for ever. The question itself stays stored.
    """
    if not message.timings.get("requeued"):
        timings = {**message.timings, "requeued": True}
        if Message.objects.filter(pk=message.pk, status=Message.Status.PENDING).update(
            timings=timings, updated_at=timezone.now()
        ):
            _enqueue_generation(message)
        return
    if Message.objects.filter(pk=message.pk, status=Message.Status.PENDING).update(
        status=Message.Status.FAILED, error=NEVER_STARTED, updated_at=timezone.now()
    ):
        audit_record(tenant_id=message.tenant_id, actor=SYSTEM, action="message.fail_stale",
                     target_type="message", target_id=message.pk, payload={"reason": "never started"})
        writer = streams.StreamWriter(message)
        transaction.on_commit(lambda: writer.end(Message.Status.FAILED, NEVER_STARTED))
