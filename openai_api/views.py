"""The OpenAI-compatible endpoints: GET /v1/models, GET /v1/models/<id>, POST /v1/chat/completions.

Async views under daphne. Each database step runs in its own short transaction in the key's
tenant (the tenant middleware leaves /v1/ alone), so a turn is queued as soon as it is stored
and an answer that streams for a minute holds no transaction. Tokens come from the turn's
Redis Stream, written by the GPU worker: daphne never imports torch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import aclosing
from functools import wraps
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from chat.models import Message
from chat.selectors import message_find
from chat.services import ChatInputError, QuotaExceeded
from openai_api import services, wire
from openai_api.access import ApiCaller
from openai_api.ratelimit import api_caller_get_limited
from openai_api.relay import turn_entries
from openai_api.selectors import models_for_caller
from openai_api.wire import ApiError

AsyncView = Callable[..., Coroutine[Any, Any, HttpResponseBase]]


def openai_endpoint(*methods: str) -> Callable[[AsyncView], AsyncView]:
    """Bearer-key endpoints: no CSRF (no cookie is involved), and every refusal in OpenAI's error format."""

    def decorator(view: AsyncView) -> AsyncView:
        @csrf_exempt
        @wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            try:
                if request.method not in methods:
                    raise ApiError(405, f"Use {' or '.join(methods)} on {request.path}.",
                                   code="method_not_allowed")
                return await view(request, *args, **kwargs)
            except ApiError as exc:
                response = JsonResponse(exc.body(), status=exc.status)
                for name, value in exc.headers.items():
                    response[name] = value
                if exc.status == 401:
                    response["WWW-Authenticate"] = 'Bearer realm="deepseek-web"'
                return response

        return wrapper

    return decorator


async def api_caller_aget(request: HttpRequest) -> ApiCaller:
    # Rate-limited per key, and per client address for wrong keys (openai_api.ratelimit).
    return await sync_to_async(api_caller_get_limited)(request.headers.get("Authorization", ""),
                                                       request.META.get("REMOTE_ADDR", ""))


@openai_endpoint("GET")
async def model_list(request: HttpRequest) -> HttpResponseBase:
    caller = await api_caller_aget(request)
    return JsonResponse(wire.model_list(await sync_to_async(models_for_caller)(caller)))


@openai_endpoint("GET")
async def model_detail(request: HttpRequest, model_id: str) -> HttpResponseBase:
    caller = await api_caller_aget(request)
    entries = await sync_to_async(models_for_caller)(caller)
    found = [entry for entry in wire.model_list(entries)["data"] if entry["id"] == model_id]
    if not found:
        raise wire.model_not_found(model_id)
    return JsonResponse(found[0])


@openai_endpoint("POST")
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    caller = await api_caller_aget(request)
    try:
        raw = request.body
    except RequestDataTooBig:
        raise ApiError(413, f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.",
                       type="invalid_request_error", code="request_too_large") from None
    completion = wire.completion_request_parse(raw)
    reply = await sync_to_async(_submit)(caller, completion, request)
    answer = _Answer(caller, completion, reply)
    if completion.stream:
        return StreamingHttpResponse(answer.events(), content_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return JsonResponse(await answer.result())


def _submit(caller: ApiCaller, completion: wire.CompletionRequest, request: HttpRequest) -> Message:
    actor = caller.actor(ip=request.META.get("REMOTE_ADDR"), user_agent=request.headers.get("User-Agent", ""),
                         trace_id=request.headers.get("X-Request-ID", ""))
    try:
        # Committed when this block ends, which queues the turn on the GPU worker.
        with caller.context():
            return services.chat_completion_submit(caller=caller, request=completion, actor=actor)
    except QuotaExceeded as exc:
        raise ApiError(429, str(exc), type="insufficient_quota", code="insufficient_quota") from None
    except ChatInputError as exc:
        raise wire.invalid(str(exc), "messages") from None


class _Answer:
    """One turn's answer, as SSE chunks or as one chat.completion object."""

    def __init__(self, caller: ApiCaller, completion: wire.CompletionRequest, reply: Message) -> None:
        self.caller = caller
        self.completion = completion
        self.reply = reply
        self.id = f"chatcmpl-{reply.pk}"
        self.created = int(reply.created_at.timestamp())

    def _load_sync(self) -> Message | None:
        with self.caller.context():
            return message_find(self.reply.pk)

    async def _load(self) -> Message | None:
        return await sync_to_async(self._load_sync)()

    async def _is_final(self) -> bool:
        message = await self._load()
        return message is None or message.is_final

    def _usage(self, message: Message) -> dict[str, Any]:
        return wire.usage(prompt_tokens=message.timings.get("prompt_tokens"),
                          completion_tokens=message.token_count, prompt_chars=self.completion.prompt_chars)

    @staticmethod
    def _failure(message: Message | None) -> ApiError | None:
        if message is None:
            return ApiError(500, "The answer was deleted while it was being written.", type="server_error")
        if message.status == Message.Status.FAILED:
            return ApiError(500, message.error or "The model failed while writing the answer.",
                            type="server_error", code="generation_failed")
        return None

    def _chunk(self, delta: dict[str, Any], **extra: Any) -> bytes:
        return wire.sse(wire.chunk(completion_id=self.id, created=self.created, model=self.completion.model,
                                   delta=delta, **extra))

    async def events(self) -> AsyncIterator[bytes]:
        yield self._chunk({"role": "assistant", "content": ""})
        sent_text = False
        async with aclosing(turn_entries(self.reply, self._is_final)) as entries:
            async for entry in entries:
                if entry.kind == "keepalive":
                    yield b": keep-alive\n\n"
                elif entry.kind == "token":
                    sent_text = True
                    yield self._chunk({"content": entry.fields.get("text", "")})
                elif entry.kind == "reset" and sent_text:
                    # A worker died mid-answer and the turn starts over; streamed text cannot be
                    # taken back, so this request ends with an error (and stops the retry).
                    yield wire.sse(ApiError(500, "The model worker restarted while writing this answer. "
                                                 "Please ask again.", type="server_error").body())
                    break
                elif entry.kind == "end":
                    async for event in self._end_events():
                        yield event
                    break
        yield wire.sse("[DONE]")

    async def _end_events(self) -> AsyncIterator[bytes]:
        message = await self._load()
        failure = self._failure(message)
        if failure is not None or message is None:
            yield wire.sse((failure or ApiError(500, "No answer.", type="server_error")).body())
            return
        extra: dict[str, Any] = {"citations": message.citations} if message.citations else {}
        yield self._chunk({}, finish=wire.finish_reason(message.timings.get("finish_reason")),
                          fingerprint=message.served_by or None, **extra)
        if self.completion.include_usage:
            yield wire.sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                            "model": self.completion.model, "system_fingerprint": message.served_by or None,
                            "choices": [], "usage": self._usage(message)})

    async def result(self) -> dict[str, Any]:
        async with aclosing(turn_entries(self.reply, self._is_final)) as entries:
            async for entry in entries:
                if entry.kind == "end":
                    break
        message = await self._load()
        failure = self._failure(message)
        if failure is not None or message is None:
            raise failure or ApiError(500, "No answer.", type="server_error")
        extra: dict[str, Any] = {"citations": message.citations} if message.citations else {}
        return wire.completion(
            completion_id=self.id, created=self.created, model=self.completion.model, content=message.content,
            finish=wire.finish_reason(message.timings.get("finish_reason")), usage=self._usage(message),
            fingerprint=message.served_by or None, **extra,
        )
