"""The worker side of a chat turn: it runs on the `gpu` Celery worker, from `chat.tasks`.

`message_generate` takes a pending reply (stored by `chat.services.message_submit`), retrieves
passages from the conversation's knowledge bases, builds the prompt, routes it to a backend
(`inference.routing`), writes the answer as numbered chunks to the reply's Redis Stream
(`chat.streams`), and stores the final row. Each turn records its owning worker process
(`Message.worker`, alive while its heartbeat key is, `chat.liveness`); its writes retry through short
PostgreSQL/Redis outages (`chat.outages`), and a final answer that cannot be stored is parked in Redis.
`turns_sweep_stale` (every 5 s on the `maintenance` queue) saves parked answers, redelivers turns
whose owner died, and fails queued turns that no worker will take. The web side of a turn (submit,
Stop) stays in `chat.services`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import SYSTEM, actor_for, audit_record
from chat import dispatch, liveness, outages, streams
from chat.models import Conversation, ConversationKnowledgeBase, Message
from chat.prompts import build_chat_messages, cut_text
from chat.services import enqueue_generation
from deepseek_web.redis_client import sync_client
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
# How often a waiting turn looks at its Stop flag, and how often it touches the row (its
# heartbeat), while it waits for a backend or streams.
STOP_POLL_INTERVAL_S = 0.2
HEARTBEAT_INTERVAL_S = 5.0
WORKER_DIED = "The model worker stopped while writing this answer. Please try again."
NEVER_STARTED = "No model worker picked this question up. Please try again."
NO_WORKER = "No model worker is available right now, so this question was not answered. Please try again later."
# A final result the database refused through a whole outage waits here for the sweep to save it.
PARKED_PREFIX = "dsw:parked:msg:"
# How much of a cited passage is stored with the answer (the Sources list shows it on hover).
SNIPPET_CHARS = 240
# The sampling settings an API request may choose (SamplingParams' field names).
REQUEST_SAMPLING_FIELDS = ("max_new_tokens", "temperature", "top_p", "stop")


def message_generate(*, tenant_id: int, message_id: int, worker: str = "") -> None:
    """Runs one turn on the GPU worker: prompt, engine, numbered chunks, final row.

    No transaction stays open while the model writes, and no connection is held: each database
    step is its own short transaction in the tenant's context (`tenant_step`), which gives the
    connection back to the pool, so hundreds of streaming turns share a few connections.
    `worker` is the owner recorded on the turn (`chat.liveness.worker_identity`, this process's
    by default). Idempotent: a second delivery of a turn that a live worker owns, or that is final,
    does nothing; one whose owner died restarts it cleanly (a `reset` entry, then the new answer).
    """
    started = time.monotonic()
    me = worker or liveness.worker_identity()
    try:
        claimed = outages.retry(lambda: _claim(tenant_id, message_id, me), what=f"turn {message_id}: claim")
    except outages.OUTAGE_ERRORS as exc:
        # Nothing was changed; the row stays queued and the sweep requeues it once the outage ends.
        logger.error("turn %s could not be claimed: %s", message_id, exc)
        return
    if claimed is None:
        return
    message, writer = claimed
    queued_ms = (timezone.now() - message.created_at).total_seconds() * 1000

    if streams.is_cancel_requested(message):
        _finish(message, writer, Message.Status.CANCELLED)
        return
    watch = _TurnWatch(message)
    try:
        _turn_run(message, writer, watch, started=started, queued_ms=queued_ms)
    finally:
        watch.close()


def _turn_run(message: Message, writer: streams.StreamWriter, watch: _TurnWatch, *, started: float,
              queued_ms: float) -> None:
    """Retrieval, prompt, backend and chunks of a claimed turn, up to its final row."""
    from inference import routing, runtime

    tenant_id = message.tenant_id
    passages, retrieval_timings = _turn_passages(message)
    message.timings = {**message.timings, **retrieval_timings}

    def prompt() -> tuple[list[dict[str, str]], str]:
        with tenant_step(tenant_id):
            return (build_chat_messages(assistant_message=message, passages=passages),
                    _sensitivity_reason(tenant_id=tenant_id, knowledge_base_ids=_turn_knowledge_base_ids(message)))

    try:
        history, sensitive = outages.retry(prompt, what=f"turn {message.pk}: prompt")
        # The local engine or a remote server (inference.routing); both stream the same Deltas.
        route = routing.chat_route(messages=history, params=_sampling_params(message), sensitive=sensitive,
                                   should_stop=watch.check_stop_and_beat)
        handle = route.handle
    except Exception as exc:
        logger.exception("turn %s failed before generation", message.pk)
        _finish(message, writer, Message.Status.FAILED,
                outages.describe(exc) if outages.is_outage(exc) else runtime.describe_error(exc))
        return
    message.served_by = route.backend

    parts: list[str] = []
    first_token_at: float | None = None
    status, error = Message.Status.DONE, ""
    finish_reason: str | None = None
    ended = False
    try:
        for deltas in _watched_deltas(handle, watch):
            text = "".join(d.text for d in deltas)
            if text:
                if first_token_at is None:
                    first_token_at = time.monotonic()
                parts.append(text)
                writer.token(text)
            delta = deltas[-1]  # only the last of them may be final
            message.token_count = delta.token_count
            if delta.finished:
                ended = True
                finish_reason = delta.finish_reason
                if delta.finish_reason == "cancelled":
                    status = Message.Status.CANCELLED
                elif delta.finish_reason == "error":
                    status, error = Message.Status.FAILED, f"The model failed while writing: {delta.error}"
                break
    except streams.StreamTakenOver:
        logger.warning("turn %s was ended elsewhere (stale sweep) while it streamed; stopped", message.pk)
        return
    except outages.OUTAGE_ERRORS as exc:
        # Redis stayed down past the retries: what was streamed cannot reach anyone; say why.
        logger.error("turn %s: chunk writes failed through an outage: %s", message.pk, exc)
        status, error = Message.Status.FAILED, outages.describe(exc)
    finally:
        if not ended:
            handle.cancel()  # a turn that stops for any reason frees its engine request at once

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


def _claim(tenant_id: int, message_id: int, me: str) -> tuple[Message, streams.StreamWriter] | None:
    """Takes the turn for worker `me`: the row becomes STREAMING with `me` as its owner.

    None when there is nothing to do: the row is gone or final, or a live worker owns it (a second
    delivery of the same turn, which must not generate the reply twice).
    """
    with tenant_step(tenant_id):
        message = Message.objects.select_for_update().filter(pk=message_id).first()
        if message is None or message.is_final:
            return None  # deleted, cancelled while queued, or already finished
        if message.status == Message.Status.STREAMING and message.worker and liveness.is_alive(message.worker):
            logger.info("turn %s is already being written by %s; this delivery is dropped", message_id,
                        message.worker)
            return None
        writer = streams.StreamWriter(message)
        if message.attempts:
            # An earlier attempt's worker died (redelivered by the broker or the sweep).
            if message.attempts >= MAX_ATTEMPTS:
                message.worker = me
                Message.objects.filter(pk=message.pk).update(status=Message.Status.STREAMING, worker=me)
                _finish(message, writer, Message.Status.FAILED,
                        "The model worker stopped twice while writing this answer. Please try again.")
                return None
            if writer.seq:
                writer.reset()
        message.status = Message.Status.STREAMING
        message.attempts += 1
        message.worker = me
        message.content = ""
        message.citations = []
        message.save(update_fields=["status", "attempts", "worker", "content", "citations", "updated_at"])
    return message, writer


def _finish(message: Message, writer: streams.StreamWriter, status: str, error: str = "") -> None:
    """Stores the turn's result and ends its stream, unless the turn was ended meanwhile.

    Only a STREAMING row that this worker owns is written: the stale-turn sweeper may have failed
    or redelivered this turn while this worker was slow; its verdict stands, and this late result
    is dropped rather than overwriting it. The save retries through a database outage; if the
    database stays away, the result is parked in Redis and the sweep saves it later. The stream's
    `end` is written only after the row is saved, so a page that reloads on it sees the result.
    """
    message.status = status
    message.error = error
    fields: dict[str, Any] = {
        "status": status, "error": error, "content": message.content, "token_count": message.token_count,
        "timings": message.timings, "served_by": message.served_by,
    }
    try:
        written = outages.retry(lambda: _final_save(message.tenant_id, message.pk, message.worker, fields),
                                what=f"turn {message.pk}: final save")
    except outages.DB_ERRORS as exc:
        _park(message, fields, exc)
        return
    if not written:
        logger.warning("turn %s was ended elsewhere (stale sweep or deletion); its %s result is dropped",
                       message.pk, status)
        return
    writer.end(status, error)


def _final_save(tenant_id: int, message_id: int, worker: str, fields: dict[str, Any]) -> int:
    with tenant_step(tenant_id):
        return Message.objects.filter(pk=message_id, status=Message.Status.STREAMING, worker=worker).update(
            updated_at=timezone.now(), **fields)


def _park(message: Message, fields: dict[str, Any], exc: BaseException) -> None:
    """Keeps a result the database refused through a whole outage; `_parked_save` stores it."""
    logger.error("turn %s: the final save failed (%s); parked in Redis for the sweep", message.pk, exc)
    record = {"tenant_id": message.tenant_id, "message_id": message.pk, "worker": message.worker, "fields": fields}
    outages.retry(lambda: sync_client().set(PARKED_PREFIX + str(message.pk), json.dumps(record)),
                  what=f"turn {message.pk}: park")


def _parked_save() -> int:
    """Saves the results that workers parked while the database was down, then ends their streams."""
    client = sync_client()
    count = 0
    for key in list(client.scan_iter(match=PARKED_PREFIX + "*", count=500)):
        raw = client.get(key)
        if raw is None:
            continue
        record = json.loads(str(raw))
        written = _final_save(record["tenant_id"], record["message_id"], record["worker"], record["fields"])
        if written:
            with tenant_context(record["tenant_id"]):
                message = Message.objects.get(pk=record["message_id"])
            streams.StreamWriter(message).end(record["fields"]["status"], record["fields"]["error"])
            count += 1
        client.delete(key)
    return count


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
    local engine still queues the request, and between deltas. It reads the Stop flag as the
    process's `streams.stop_flags` last read it (every STOP_POLL_S), and writes: it touches the row
    every HEARTBEAT_INTERVAL_S, so the stale-turn sweeper does not take a long wait, or a long
    answer, for a dead worker. A heartbeat
    that finds the row no longer streaming (the sweeper failed it, or it was deleted) stops the
    turn too: nobody will store its answer.
    """

    def __init__(self, message: Message) -> None:
        self.message = message
        self.stop = False
        self.last_heartbeat = time.monotonic()
        # The process reads every running turn's Stop flag at once (streams.StopFlags).
        self.stop_key = streams.stop_flags.watch(message)

    def close(self) -> None:
        streams.stop_flags.unwatch(self.stop_key)

    def check_stop_and_beat(self) -> bool:
        """Whether the turn must stop; beats the heartbeat when one is due."""
        now = time.monotonic()
        if not self.stop:
            self.stop = streams.stop_flags.is_set(self.stop_key)
        if not self.stop and now - self.last_heartbeat >= HEARTBEAT_INTERVAL_S:
            self.last_heartbeat = now
            self.stop = not self._beat()
        return self.stop

    def _beat(self) -> bool:
        """Touches the row; False when it is no longer this worker's streaming turn.

        A database outage does not stop the turn: the beat is skipped, and the next one tries again
        (the sweep redelivers a turn only when its owner's Redis heartbeat has gone too).
        """
        try:
            with tenant_step(self.message.tenant_id):
                alive = bool(Message.objects.filter(pk=self.message.pk, status=Message.Status.STREAMING,
                                                    worker=self.message.worker)
                             .update(updated_at=timezone.now()))
        except outages.DB_ERRORS as exc:
            logger.warning("turn %s: heartbeat skipped (%s)", self.message.pk, exc)
            from django.db import connection

            connection.close()
            return True
        if alive:  # its slot under the tenant's running cap lives as long as the turn (chat.dispatch)
            dispatch.renew(dispatch.Turn(tenant_id=self.message.tenant_id, message_id=self.message.pk))
        return alive


def _watched_deltas(handle: StreamHandle, watch: _TurnWatch) -> Iterator[list[Delta]]:
    """The handle's deltas up to the final one, in runs: each run is what had queued up by the time
    the turn read it (one delta, unless the worker fell behind; it then catches up with one chunk
    write instead of one per token). While none arrives (the local engine may queue the request
    behind others for a long time), and between them, the watch is polled, and Stop cancels the
    request: the handle then ends with a "cancelled" delta."""
    while True:
        delta = handle.next_delta(timeout=STOP_POLL_INTERVAL_S)
        if watch.check_stop_and_beat():
            handle.cancel()  # idempotent: the Stop flag stays set
        if delta is None:
            continue
        run = [delta]
        while not run[-1].finished and (queued := handle.next_delta(timeout=0)) is not None:
            run.append(queued)
        yield run
        if run[-1].finished:
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
    """Runs every 5 s on the `maintenance` queue (its own solo worker, so it runs when no gpu
    worker does). Saves parked results, then per tenant: redelivers streaming turns whose owner
    died, and requeues or fails queued turns that no worker will take. Returns how many it acted on.
    """
    count = _parked_save()
    alive = liveness.alive_workers()
    since = liveness.seconds_since_any_worker()
    no_worker = not alive and (since is None or since >= settings.CHAT_NO_WORKER_S)
    for tenant_id in Tenant.objects.values_list("id", flat=True):
        count += _sweep_tenant(tenant_id, alive=alive, no_worker=no_worker)
    return count


def turn_is_waiting(message: Message) -> bool:
    """Whether a queued turn's task is still in the broker's `gpu` queue, waiting for a worker.

    THE one place the sweep asks "is this turn only waiting?": a waiting turn is never requeued
    (that once generated a reply twice). Reads the Redis list kombu keeps for the queue; a task a
    live worker reserved is claimed within moments, so a turn older than CHAT_PENDING_CHECK_S
    found only there is lost. The fair scheduler (chat.dispatch) answers this from its own queues.
    """
    if dispatch.is_waiting(message.pk):
        return True
    needle = f'"turn:{message.pk}:'
    return any(needle in str(raw) for raw in sync_client().lrange("gpu", 0, -1))


def _is_orphan(message: Message, alive: set[str], now: datetime) -> bool:
    """A streaming turn whose worker is gone: its owner has no heartbeat and its row was not touched
    for CHAT_ORPHAN_GRACE_S (both, so a Redis or database blip alone never takes a live turn)."""
    if not message.worker:  # no owner recorded (an older row): only the row's own heartbeat tells
        return message.updated_at < now - timedelta(seconds=settings.CHAT_STALE_TURN_S)
    return (message.worker not in alive
            and message.updated_at < now - timedelta(seconds=settings.CHAT_ORPHAN_GRACE_S))


def _sweep_tenant(tenant_id: int, *, alive: set[str], no_worker: bool) -> int:
    now = timezone.now()
    with tenant_context(tenant_id):
        streaming = [m for m in Message.objects.filter(status=Message.Status.STREAMING) if _is_orphan(m, alive, now)]
        waiting = list(Message.objects.filter(
            status=Message.Status.PENDING, updated_at__lt=now - timedelta(seconds=settings.CHAT_PENDING_CHECK_S)))
    count = 0
    for message in streaming:
        with tenant_context(tenant_id):
            count += _orphan_redeliver(message)
    for message in waiting:
        with tenant_context(tenant_id):
            count += _pending_check(message, no_worker=no_worker, now=now)
    return count


def _orphan_redeliver(message: Message) -> int:
    """Queues a dead worker's turn again (it restarts cleanly), or fails it after MAX_ATTEMPTS."""
    owned = Message.objects.filter(pk=message.pk, status=Message.Status.STREAMING, worker=message.worker,
                                   updated_at=message.updated_at)
    if message.worker and message.attempts < MAX_ATTEMPTS:
        if owned.update(status=Message.Status.PENDING, updated_at=timezone.now(),
                        timings={**message.timings, "redelivered": message.attempts}):
            logger.warning("turn %s: its worker %s died; queued again", message.pk, message.worker)
            enqueue_generation(message)
            return 1
        return 0
    return _fail_saved(owned, message, WORKER_DIED, reason="worker died")


def _pending_check(message: Message, *, no_worker: bool, now: datetime) -> int:
    """A turn still queued long after it was asked (or requeued): leave it if it only waits; tell
    the user when no gpu worker is available; requeue it once if its task is gone; then fail."""
    pending = Message.objects.filter(pk=message.pk, status=Message.Status.PENDING, updated_at=message.updated_at)
    if no_worker and message.created_at < now - timedelta(seconds=settings.CHAT_NO_WORKER_S):
        return _fail_saved(pending, message, NO_WORKER, reason="no worker")
    if turn_is_waiting(message):
        return 0
    if not message.timings.get("requeued"):
        if pending.update(timings={**message.timings, "requeued": True}, updated_at=timezone.now()):
            enqueue_generation(message)
            return 1
        return 0
    return _fail_saved(pending, message, NO_WORKER if no_worker else NEVER_STARTED, reason="never started")


def _fail_saved(rows: Any, message: Message, error: str, *, reason: str) -> int:
    """Fails the turn if `rows` (the turn, as the sweep saw it) still matches, and announces the
    failure on its stream only once that is committed: a page that reloads on the `end` must find
    the failure stored, never "streaming"."""
    if not rows.update(status=Message.Status.FAILED, error=error, updated_at=timezone.now()):
        return 0
    audit_record(tenant_id=message.tenant_id, actor=SYSTEM, action="message.fail_stale",
                 target_type="message", target_id=message.pk, payload={"reason": reason})
    writer_for = message

    def announce() -> None:
        try:
            streams.StreamWriter(writer_for).end(Message.Status.FAILED, error)
        except (streams.StreamTakenOver, redis.RedisError):
            logger.exception("turn %s: failed and saved, but its stream end could not be written", message.pk)

    transaction.on_commit(announce)
    return 1
