"""OpenAI's wire format: parsing a chat-completion request, and the JSON objects we answer with.

Only what the product can honour is accepted: one choice (`n` 1), text content, and the sampling
settings the engine has (`max_tokens`, `temperature`, `top_p`, `stop`). Fields a client sends
that change nothing here (`user`, `seed`, `presence_penalty`...) are ignored, as other
OpenAI-compatible servers do, so existing clients work unchanged.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

# The local chat model; knowledge bases are offered as "deepseek-web:kb:<id>".
BASE_MODEL = "deepseek-web"
_KB_MODEL = re.compile(rf"^{re.escape(BASE_MODEL)}:kb:(\d{{1,18}})$")
MAX_MESSAGES = 200
MAX_STOP_SEQUENCES = 4
# Roles a client may send; "developer" is OpenAI's newer name for a system message.
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """An answer in OpenAI's error format: {"error": {"message", "type", "code", "param"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)


def error_body(message: str, *, type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


def invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, code="invalid_value" if param else None, param=param)


def model_not_found(model: str) -> ApiError:
    # The same answer for a knowledge base of another tenant as for one that never existed.
    return ApiError(404, f"The model `{model[:100]}` does not exist or you do not have access to it.",
                    code="model_not_found", param="model")


def kb_model_id(knowledge_base_id: int) -> str:
    return f"{BASE_MODEL}:kb:{knowledge_base_id}"


def knowledge_base_id_of(model: str) -> int | None:
    """The knowledge base a model id names; None for the plain chat model. Unknown ids: 404."""
    if model == BASE_MODEL:
        return None
    found = _KB_MODEL.match(model)
    if found is None:
        raise model_not_found(model)
    return int(found.group(1))


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    messages: list[dict[str, str]]
    stream: bool = False
    include_usage: bool = False
    # SamplingParams' names: what the GPU worker applies to this turn.
    sampling: dict[str, Any] = field(default_factory=dict)

    @property
    def question(self) -> str:
        """The last user message: what the turn stores, counts against quotas, and searches with."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user" and m["content"].strip())

    @property
    def prompt_chars(self) -> int:
        return sum(len(m["content"]) for m in self.messages)


def completion_request_parse(raw: bytes) -> CompletionRequest:
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise invalid("The request body is not valid JSON.") from None
    except RecursionError:  # nesting deeper than the parser's stack: refused, never a 500
        raise invalid("The request body is nested too deeply.") from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "You must provide a model parameter.", code="missing_required_parameter",
                       param="model")
    _storable(model, "model")
    n = body.get("n", 1)
    if n not in (1, None):
        raise invalid("Only n=1 is supported.", "n")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise invalid("`stream` must be true or false.", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise invalid("`stream_options` must be an object.", "stream_options")
    return CompletionRequest(
        model=model, messages=_messages(body.get("messages")), stream=stream,
        include_usage=bool(options.get("include_usage")), sampling=_sampling(body),
    )


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise invalid("`messages` must be a non-empty list.", "messages")
    if len(value) > MAX_MESSAGES:
        raise invalid(f"At most {MAX_MESSAGES} messages are accepted.", "messages")
    messages = []
    for i, item in enumerate(value):
        # The role is checked as a string first: a list or an object is unhashable, and `in` a dict raised.
        if not isinstance(item, dict) or not isinstance(item.get("role"), str) or item["role"] not in _ROLES:
            raise invalid(f"messages[{i}] needs a role: system, developer, user or assistant.",
                          f"messages[{i}].role")
        content = _text(item.get("content"), f"messages[{i}].content")
        if len(content) > settings.CHAT_MAX_MESSAGE_CHARS:
            raise invalid(f"messages[{i}] is too long: {len(content)} characters, the limit is "
                          f"{settings.CHAT_MAX_MESSAGE_CHARS}.", f"messages[{i}].content")
        messages.append({"role": _ROLES[item["role"]], "content": content})
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise invalid("`messages` must contain a user message with text.", "messages")
    return messages


def _storable(text: str, param: str) -> str:
    """`text`, if PostgreSQL can store it: JSON may carry a NUL or an unpaired surrogate ("\\ud800"),
    which a text column refuses; refused here with a reason instead of failing as a 500 later."""
    if "\x00" in text:
        raise invalid("Text may not contain a NUL character.", param)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid("Text may not contain an unpaired surrogate.", param) from None
    return text


def _text(content: Any, param: str) -> str:
    """A message's text: a string, or a list of text parts (other part types have no meaning here)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return _storable(content, param)
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid("Only text content parts are supported.", param)
            parts.append(part["text"])
        return _storable("".join(parts), param)
    raise invalid("A message's content must be a string or a list of text parts.", param)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= value <= high) \
            or not math.isfinite(value):
        raise invalid(f"`{name}` must be a number from {low:g} to {high:g}.", name)
    return float(value)


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    sampling: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise invalid("`max_tokens` must be a positive integer.", "max_tokens")
        # The operator's cap per answer (CHAT_MAX_NEW_TOKENS) applies to the API too; a larger
        # request is served up to the cap and ends with finish_reason "length".
        sampling["max_new_tokens"] = min(max_tokens, settings.CHAT_MAX_NEW_TOKENS)
    temperature = _number(body, "temperature", 0, 2)
    if temperature is not None:
        sampling["temperature"] = temperature
    top_p = _number(body, "top_p", 0, 1)
    if top_p is not None:
        if top_p == 0:
            raise invalid("`top_p` must be greater than 0.", "top_p")
        sampling["top_p"] = top_p
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or len(stops) > MAX_STOP_SEQUENCES or \
                not all(isinstance(s, str) and s for s in stops):
            raise invalid(f"`stop` must be a string or a list of up to {MAX_STOP_SEQUENCES} non-empty strings.",
                          "stop")
        sampling["stop"] = stops
    return sampling


# -- answers ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelEntry:
    id: str
    created: int
    owned_by: str
    name: str


def model_list(entries: Sequence[ModelEntry]) -> dict[str, Any]:
    return {"object": "list", "data": [
        {"id": e.id, "object": "model", "created": e.created, "owned_by": e.owned_by, "name": e.name}
        for e in entries
    ]}


def usage(*, prompt_tokens: int | None, completion_tokens: int, prompt_chars: int) -> dict[str, Any]:
    """OpenAI's usage object. The engine counts both; when a backend did not report the prompt's
    count, it is estimated at 4 characters a token and `estimated` says so."""
    estimated = prompt_tokens is None
    prompt = prompt_tokens if prompt_tokens is not None else math.ceil(prompt_chars / 4)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens, "estimated": estimated}


def finish_reason(engine_reason: str | None) -> str:
    # The engine ends by "stop" (EOS or a stop string) or "length"; a cancelled turn stopped too.
    return "length" if engine_reason == "length" else "stop"


def chunk(*, completion_id: str, created: int, model: str, delta: dict[str, Any],
          finish: str | None = None, fingerprint: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }


def completion(*, completion_id: str, created: int, model: str, content: str, finish: str,
               usage: dict[str, Any], fingerprint: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "id": completion_id, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                     "logprobs": None, "finish_reason": finish}],
        "usage": usage,
        **extra,
    }


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()
