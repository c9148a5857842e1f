"""The worker side of a chat turn: it runs on the `gpu` Celery worker, from `chat.tasks`.

`message_generate` takes a pending reply (stored by `chat.services.message_submit`), retrieves
passages from the conversation's knowledge bases, builds the prompt, routes it to a backend
(`inference.routing`), writes the answer as numbered chunks to the reply's Redis Stream
(`chat.streams`), and stores the final row. `turns_sweep_stale` (on beat) ends turns whose worker
died. The web side of a turn (submit, Stop) stays in `chat.services`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import SYSTEM, actor_for, audit_record
from chat import dispatch, streams
from chat.models import Conversation, ConversationKnowledgeBase, Message
from chat.prompts import build_chat_messages, cut_text
from chat.services import enqueue_generation
from knowledge.models import KnowledgeBase
from knowledge.retrieval import Passage
from knowledge.selectors import knowledge_base_ids_allowed
from tenants.models import Membership, Tenant
from tenants.rls import tenant_context, tenant_step

if TYPE_CHECKING:
    from inference.engine import Delta, SamplingParams
    from inference.engine.backends import StreamHandle

logger = logging.getLogger(__name__)

# A turn whose worker died is started at most this many times in all.
MAX_ATTEMPTS = 2
# How often the worker reads the Stop flag, and how often it touches the row (its heartbeat),
# while a turn waits for a backend or streams.
STOP_POLL_INTERVAL_S = 0.2
HEARTBEAT_INTERVAL_S = 5.0
WORKER_DIED = "The model worker stopped while writing this answer. Please try again."
NEVER_STARTED = "No model worker picked this question up. Please try again."
# How much of a cited passage is stored with the answer (the Sources list shows it on hover).
SNIPPET_CHARS = 240
# The sampling settings an API request may choose (SamplingParams' field names).
REQUEST_SAMPLING_FIELDS = ("max_new_tokens", "temperature", "top_p", "stop")


def message_generate(*, tenant_id: int, message_id: int) -> None:
    """Runs one turn on the GPU worker: prompt, engine, numbered chunks, final row.

    No transaction stays open while the model writes, and no connection is held: each database
    step is its own short transaction in the tenant's context (`tenant_step`), which gives the
    connection back to the pool, so hundreds of streaming turns share a few connections.
    """
    from inference import routing, runtime

    started = time.monotonic()
    with tenant_step(tenant_id):
        message = Message.objects.select_for_update().filter(pk=message_id).first()
        if message is None or message.is_final:
            return  # deleted, cancelled while queued, or already finished
        writer = streams.StreamWriter(message)
        if message.status == Message.Status.STREAMING:
            # A worker died mid-turn and the broker redelivered it.
            if message.attempts >= MAX_ATTEMPTS:
                _finish(message, writer, Message.Status.FAILED,
                        "The model worker stopped twice while writing this answer. Please try again.")
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
    watch = _TurnWatch(message)
    try:
        with tenant_step(tenant_id):
            history = build_chat_messages(assistant_message=message, passages=passages)
            sensitive = _sensitivity_reason(tenant_id=tenant_id, knowledge_base_ids=_turn_knowledge_base_ids(message))
        # The local engine or a remote server (inference.routing); both stream the same Deltas.
        route = routing.chat_route(messages=history, params=_sampling_params(message), sensitive=sensitive,
                                   should_stop=watch.check_stop_and_beat)
        handle = route.handle
    except Exception as exc:
        logger.exception("turn %s failed before generation", message.pk)
        _finish(message, writer, Message.Status.FAILED, runtime.describe_error(exc))
        return
    message.served_by = route.backend

    parts: list[str] = []
    first_token_at: float | None = None
    status, error = Message.Status.DONE, ""
    finish_reason: str | None = None
    try:
        for delta in _watched_deltas(handle, watch):
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
    except streams.StreamTakenOver:
        handle.cancel()
        logger.warning("turn %s was ended elsewhere (stale sweep) while it streamed; stopped", message.pk)
        return

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


def _finish(message: Message, writer: streams.StreamWriter, status: str, error: str = "") -> None:
    """Stores the turn's result and ends its stream, unless the turn was ended meanwhile.

    Only a STREAMING row is written: the stale-turn sweeper may have failed this turn (and ended
    its stream) while this worker was slow; its verdict stands, and this late result is dropped
    rather than overwriting it.
    """
    message.status = status
    message.error = error
    with tenant_step(message.tenant_id):
        written = Message.objects.filter(pk=message.pk, status=Message.Status.STREAMING).update(
            status=status, error=error, content=message.content, token_count=message.token_count,
            timings=message.timings, served_by=message.served_by, updated_at=timezone.now(),
        )
    if not written:
        logger.warning("turn %s was ended elsewhere (stale sweep or deletion); its %s result is dropped",
                       message.pk, status)
        return
    writer.end(status, error)


def _sampling_params(message: Message) -> SamplingParams:
    """The worker's defaults, with what an API request chose (validated by the API view)."""
    from inference import runtime

    params = runtime.sampling_params()
    chosen = {k: v for k, v in (message.request.get("sampling") or {}).items() if k in REQUEST_SAMPLING_FIELDS}
    if "stop" in chosen:
        chosen["stop"] = tuple(chosen["stop"])
    return dataclasses.replace(params, **chosen)


class _TurnWatch:
    """Everything a running turn checks while it waits: the Stop flag, and its own heartbeat.

    `check_stop_and_beat()` is polled while routing waits for a remote's first token, while the
    local engine still queues the request, and between deltas. It reads the Stop flag at most every
    STOP_POLL_INTERVAL_S, and writes: it touches the row every HEARTBEAT_INTERVAL_S, so the
    stale-turn sweeper does not take a long wait, or a long answer, for a dead worker. A heartbeat
    that finds the row no longer streaming (the sweeper failed it, or it was deleted) stops the
    turn too: nobody will store its answer.
    """

    def __init__(self, message: Message) -> None:
        self.message = message
        self.stop = False
        self.last_stop_poll = 0.0
        self.last_heartbeat = time.monotonic()

    def check_stop_and_beat(self) -> bool:
        """Whether the turn must stop; beats the heartbeat when one is due."""
        now = time.monotonic()
        if not self.stop and now - self.last_stop_poll >= STOP_POLL_INTERVAL_S:
            self.last_stop_poll = now
            self.stop = streams.is_cancel_requested(self.message)
        if not self.stop and now - self.last_heartbeat >= HEARTBEAT_INTERVAL_S:
            self.last_heartbeat = now
            self.stop = not self._beat()
        return self.stop

    def _beat(self) -> bool:
        """Touches the row; False when it is no longer this worker's streaming turn."""
        with tenant_step(self.message.tenant_id):
            alive = bool(Message.objects.filter(pk=self.message.pk, status=Message.Status.STREAMING)
                         .update(updated_at=timezone.now()))
        if alive:  # its slot under the tenant's running cap lives as long as the turn (chat.dispatch)
            dispatch.renew(dispatch.Turn(tenant_id=self.message.tenant_id, message_id=self.message.pk))
        return alive


def _watched_deltas(handle: StreamHandle, watch: _TurnWatch) -> Iterator[Delta]:
    """The handle's deltas up to the final one. While none arrives (the local engine may queue the
    request behind others for a long time), and between them, the watch is polled, and Stop
    cancels the request: the handle then ends with a "cancelled" delta."""
    while True:
        delta = handle.next_delta(timeout=STOP_POLL_INTERVAL_S)
        if watch.check_stop_and_beat():
            handle.cancel()  # idempotent: the Stop flag stays set
        if delta is None:
            continue
        yield delta
        if delta.finished:
            return


def _sensitivity_reason(*, tenant_id: int, knowledge_base_ids: Sequence[int]) -> str:
    """Why a turn must stay on the local model, or "" when it may go elsewhere. Call it in the
    tenant's context: row-level security hides other tenants' knowledge bases."""
    if Tenant.objects.filter(pk=tenant_id, sensitive=True).exists():
        return "the tenant is marked sensitive"
    sensitive = sorted(KnowledgeBase.objects.filter(tenant_id=tenant_id, pk__in=list(knowledge_base_ids),
                                                    sensitive=True).values_list("pk", flat=True))
    if sensitive:
        return f"knowledge base {', '.join(map(str, sensitive))} is marked sensitive"
    return ""


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
    except Exception as exc:
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
    with tenant_step(tenant_id):
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
    with tenant_step(tenant_id):
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
    # A turn still waiting in fair dispatch is not lost: it waits its turn behind others.
    in_dispatch = dispatch.queued_message_ids() if waiting else set()
    waiting = [message for message in waiting if message.pk not in in_dispatch]
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
            enqueue_generation(message)
        return
    if Message.objects.filter(pk=message.pk, status=Message.Status.PENDING).update(
        status=Message.Status.FAILED, error=NEVER_STARTED, updated_at=timezone.now()
    ):
        audit_record(tenant_id=message.tenant_id, actor=SYSTEM, action="message.fail_stale",
                     target_type="message", target_id=message.pk, payload={"reason": "never started"})
        writer = streams.StreamWriter(message)
        transaction.on_commit(lambda: writer.end(Message.Status.FAILED, NEVER_STARTED))
