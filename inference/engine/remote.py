"""A remote OpenAI-compatible server as a chat backend: streaming, retries, timeouts, cancel, health.

A remote server is any server that speaks OpenAI's streaming chat completions: vLLM, SGLang,
TGI, or a cloud API such as DeepSeek's. `RemoteServer.submit_chat` returns a `RemoteServerHandle`
that behaves like the local engine's `RequestHandle` (the `backends.StreamHandle` protocol).

Framework-free like the rest of `inference.engine`: no Django, no torch (the GPU image may run it
on its own, and daphne may import it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from .request import Delta, DeltaQueue, FinishReason, SamplingParams

logger = logging.getLogger(__name__)

# How often a waiting consumer re-checks the deadlines and the cancel flag.
_POLL_S = 0.1
# What an error message quotes of a server's error body: enough to read, not a whole HTML page.
_BODY_CHARS = 300
# Statuses worth another attempt: the server is overloaded, restarting, or rate-limiting us.
_RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Connections to one server: unbounded, with enough kept alive for a busy worker (see `client`).
CLIENT_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=64)


class BackendConfigError(ValueError):
    """An INFERENCE_BACKENDS entry is malformed; the message says which field."""


@dataclass(frozen=True)
class Timeouts:
    """All in seconds. `first_token_s` counts from submit, across retries; `idle_s` is the longest
    gap allowed between two chunks once text flows; `total_s` bounds the whole answer."""

    connect_s: float = 5.0
    first_token_s: float = 60.0
    idle_s: float = 30.0
    total_s: float = 600.0


@dataclass(frozen=True)
class RemoteServerConfig:
    name: str
    base_url: str  # ends before /chat/completions, e.g. http://vllm:8000/v1
    model: str
    api_key: str = ""
    timeouts: Timeouts = field(default_factory=Timeouts)
    # Further attempts when a request fails before its first token; never once text was streamed.
    retries: int = 2
    backoff_s: float = 0.5
    health_ttl_s: float = 5.0
    # OpenAI's `stream_options.include_usage`; a server that refuses unknown fields may need it off.
    include_usage: bool = True

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RemoteServerConfig:
        """Parses one INFERENCE_BACKENDS entry. Unknown keys are refused: a typo in a timeout's name
        must not silently leave the default in force."""
        if not isinstance(raw, Mapping):
            raise BackendConfigError(f"a backend must be a JSON object, not {type(raw).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - known)
        name = str(raw.get("name") or "")
        if unknown:
            raise BackendConfigError(f"backend {name or '?'}: unknown keys {', '.join(unknown)}")
        for required in ("name", "base_url", "model"):
            if not str(raw.get(required) or "").strip():
                raise BackendConfigError(f"backend {name or '?'}: {required} is required")
        if name.startswith("local"):
            raise BackendConfigError(f"backend {name}: names starting with 'local' are kept for the local engine")
        base_url = str(raw["base_url"]).rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise BackendConfigError(f"backend {name}: base_url must start with http:// or https://")
        timeouts_raw = raw.get("timeouts") or {}
        if not isinstance(timeouts_raw, Mapping):
            raise BackendConfigError(f"backend {name}: timeouts must be an object")
        unknown = sorted(set(timeouts_raw) - set(Timeouts.__dataclass_fields__))
        if unknown:
            raise BackendConfigError(f"backend {name}: unknown timeouts {', '.join(unknown)}")
        try:
            timeouts = Timeouts(**{k: float(v) for k, v in timeouts_raw.items()})
            config = cls(
                name=name, base_url=base_url, model=str(raw["model"]), api_key=str(raw.get("api_key") or ""),
                timeouts=timeouts, retries=int(raw.get("retries", 2)), backoff_s=float(raw.get("backoff_s", 0.5)),
                health_ttl_s=float(raw.get("health_ttl_s", 5.0)), include_usage=bool(raw.get("include_usage", True)),
            )
        except (TypeError, ValueError) as exc:
            raise BackendConfigError(f"backend {name}: {exc}") from exc
        if min(timeouts.connect_s, timeouts.first_token_s, timeouts.idle_s, timeouts.total_s) <= 0:
            raise BackendConfigError(f"backend {name}: timeouts must be positive")
        if config.retries < 0 or config.backoff_s < 0 or config.health_ttl_s < 0:
            raise BackendConfigError(f"backend {name}: retries, backoff_s and health_ttl_s cannot be negative")
        return config


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str  # why not, or "" when ok
    checked_at: float  # time.monotonic()
    latency_s: float = 0.0


class AttemptError(RuntimeError):
    """One attempt failed; `retryable` says whether another attempt may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class RemoteServer:
    """One OpenAI-compatible server. Shared by all threads of a process: one connection pool, one
    cached health state."""

    def __init__(self, config: RemoteServerConfig) -> None:
        self.config = config
        self.name = config.name
        t = config.timeouts
        # The socket's read timeout is only a backstop that frees a stuck reader thread; the
        # precise first-token, idle and total deadlines are checked by the handle (httpx fixes one
        # read timeout per request, and the wait for the first token is legitimately longer than
        # the gap allowed between chunks).
        self._timeout = httpx.Timeout(connect=t.connect_s, read=max(t.first_token_s, t.idle_s) + 1.0,
                                      write=t.connect_s, pool=t.connect_s)
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self._health: Health | None = None
        self._health_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RemoteServer({self.name!r}, {self.config.base_url!r})"

    @property
    def client(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                headers = {"Accept": "text/event-stream"}
                if self.config.api_key:
                    headers["Authorization"] = f"Bearer {self.config.api_key}"
                # No cap on connections: each running turn holds one stream for its whole answer, and
                # httpx's default of 100 would queue the 101st turn behind the others (in the pool
                # wait, then failing as a connect timeout). The worker's thread count bounds them.
                self._client = httpx.Client(timeout=self._timeout, headers=headers, follow_redirects=False,
                                            limits=CLIENT_LIMITS)
            return self._client

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # ---- health

    def health(self, *, force: bool = False) -> Health:
        """GET {base_url}/models, cached for `health_ttl_s`, so routing a turn costs no request
        most of the time. The configured model must be listed: a server that answers but serves
        another model would fail every turn."""
        with self._health_lock:
            cached = self._health
            if not force and cached is not None and time.monotonic() - cached.checked_at < self.config.health_ttl_s:
                return cached
            # Checked under the lock: concurrent turns wait for one probe instead of sending many.
            self._health = self._probe()
            return self._health

    def mark_unhealthy(self, reason: str) -> None:
        """A request failed before its first token: skip this server until the cache expires."""
        with self._health_lock:
            self._health = Health(False, reason, time.monotonic())

    def _probe(self) -> Health:
        started = time.monotonic()
        t = self.config.timeouts
        try:
            response = self.client.get(f"{self.config.base_url}/models", headers={"Accept": "application/json"},
                                       timeout=httpx.Timeout(t.connect_s, read=max(t.connect_s, 5.0)))
        except httpx.HTTPError as exc:
            return Health(False, _describe_http_error(exc), time.monotonic())
        latency = time.monotonic() - started
        if response.status_code != 200:
            return Health(False, f"GET /models answered HTTP {response.status_code}", time.monotonic(), latency)
        try:
            listed = [str(m.get("id")) for m in response.json().get("data", []) if isinstance(m, dict)]
        except (ValueError, AttributeError):
            return Health(False, "GET /models did not answer a model list", time.monotonic(), latency)
        if self.config.model not in listed:
            return Health(False, f"model {self.config.model!r} is not served (it lists {', '.join(listed[:5]) or 'none'})",
                          time.monotonic(), latency)
        return Health(True, "", time.monotonic(), latency)

    # ---- generation

    def submit_chat(self, messages: Sequence[Mapping[str, str]], params: SamplingParams) -> RemoteServerHandle:
        """Start streaming an answer and return at once; the request runs on its own thread."""
        return RemoteServerHandle(self, [{"role": m["role"], "content": m["content"]} for m in messages], params)

    def payload(self, messages: list[dict[str, str]], params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "stream": True,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if self.config.include_usage:
            body["stream_options"] = {"include_usage": True}
        return body


class RemoteServerHandle(DeltaQueue):
    """A streaming request to a remote server, shaped like the engine's `RequestHandle`.

    A reader thread POSTs the request, parses the server-sent events and queues `Delta`s. Before
    the first text arrives it retries with backoff (connection refused, 5xx, 429, a dropped
    connection); after that never, since text already shown cannot be taken back. Consumers
    wait in short polls and enforce the deadlines there.
    """

    poll_s = _POLL_S  # deadlines are checked at each poll

    def __init__(self, server: RemoteServer, messages: list[dict[str, str]], params: SamplingParams) -> None:
        super().__init__()
        self.id = f"{server.name}-{id(self):x}"
        self.server = server
        self.params = params
        self.text = ""
        self.token_count = 0
        self.upstream_finish_reason: str | None = None  # as the server said it: stop, length, content_filter...
        self.ttft_s: float | None = None
        self.usage: dict[str, int] = {}
        self.attempts = 0
        self.attempt_errors: list[str] = []
        self._messages = messages
        self._submitted_at = time.monotonic()
        self._last_chunk_at = self._submitted_at
        self._started = threading.Event()  # first text, or the end
        self._cancel = threading.Event()
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._run, name=f"backend-{server.name}", daemon=True)
        self._thread.start()

    # ---- consumer side

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    @property
    def started(self) -> bool:
        """Whether text arrived (or the request ended); until then it may still fail over."""
        return self._started.is_set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop: close the stream, which tells the server to abort; ends with "cancelled"."""
        self._abort()
        self._finish("cancelled")

    def wait(self, timeout: float | None = None) -> bool:
        return self._wait_for(self._done, timeout)

    def wait_started(self, timeout: float | None = None, should_stop: Callable[[], bool] | None = None) -> bool:
        """Block until the first text or the end; False on timeout. `should_stop` is polled, and
        cancels the request when it says so (the user pressed Stop while we waited)."""
        return self._wait_for(self._started, timeout, should_stop)

    def next_delta(self, timeout: float) -> Delta | None:
        self._check_deadlines()  # a stalled server ends the request at its deadline
        return super().next_delta(timeout)

    def _wait_for(self, event: threading.Event, timeout: float | None,
                  should_stop: Callable[[], bool] | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not event.is_set():
            self._check_deadlines()
            if should_stop is not None and not self._done.is_set() and should_stop():
                self.cancel()
            remaining = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
            if remaining <= 0:
                return event.is_set()
            event.wait(remaining)
        return True

    def _check_deadlines(self) -> None:
        if self._done.is_set():
            return
        t = self.server.config.timeouts
        now = time.monotonic()
        if now - self._submitted_at > t.total_s:
            reason = f"no complete answer within {t.total_s:g} s"
        elif self.ttft_s is None and now - self._submitted_at > t.first_token_s:
            reason = f"no first token within {t.first_token_s:g} s"
            if self.attempt_errors:
                reason += f" ({self.attempts} attempts; last: {self.attempt_errors[-1]})"
        elif self.ttft_s is not None and now - self._last_chunk_at > t.idle_s:
            reason = f"the stream stalled: nothing for {t.idle_s:g} s"
        else:
            return
        self._abort()
        self._finish("error", f"{self.server.name}: {reason}")

    # ---- reader thread

    def _run(self) -> None:
        config = self.server.config
        try:
            while not self._cancel.is_set() and not self._done.is_set():
                self.attempts += 1
                try:
                    self._stream_once()
                    return
                except AttemptError as exc:
                    if self._cancel.is_set() or self._done.is_set():
                        # Our own abort (cancel, a deadline) ended the attempt: whoever aborted
                        # finishes the handle with the real reason.
                        return
                    self.attempt_errors.append(str(exc))
                    # Retry only while nothing was streamed: a second attempt would repeat text.
                    if not exc.retryable or self.ttft_s is not None or self.attempts > config.retries:
                        self._finish("error", f"{self.server.name}: {exc}")
                        return
                    # Exponential backoff with jitter, so workers do not retry in lockstep; cut
                    # short by a cancel.
                    delay = config.backoff_s * (2 ** (self.attempts - 1)) * random.uniform(0.8, 1.2)
                    logger.info("%s: attempt %d failed (%s); retrying in %.2f s", self.server.name,
                                self.attempts, exc, delay)
                    self._cancel.wait(delay)
        except Exception as exc:  # a reader thread must always end its handle
            logger.exception("%s: reader thread failed", self.server.name)
            self._finish("error", f"{self.server.name}: {type(exc).__name__}: {exc}")

    def _stream_once(self) -> None:
        server = self.server
        body = server.payload(self._messages, self.params)
        try:
            with server.client.stream("POST", f"{server.config.base_url}/chat/completions", json=body) as response:
                with self._lock:
                    self._response = response
                if self._cancel.is_set():
                    return
                if response.status_code != 200:
                    detail = _error_detail(response.read())
                    raise AttemptError(f"HTTP {response.status_code}{': ' + detail if detail else ''}",
                                       retryable=response.status_code in _RETRY_STATUSES)
                self._read_events(response)
        except httpx.HTTPError as exc:
            if self._cancel.is_set() or self._done.is_set():
                return  # our own cancel closed the connection under the reader
            raise AttemptError(_describe_http_error(exc), retryable=True) from exc
        except OSError as exc:  # a socket shut down by cancel() can surface as a plain OSError
            if self._cancel.is_set() or self._done.is_set():
                return
            raise AttemptError(f"{type(exc).__name__}: {exc}", retryable=True) from exc
        finally:
            with self._lock:
                self._response = None

    def _read_events(self, response: httpx.Response) -> None:
        """Server-sent events: `data:` lines, a blank line ends an event, `[DONE]` ends the stream."""
        data: list[str] = []
        upstream_reason: str | None = None
        for line in response.iter_lines():
            if self._cancel.is_set() or self._done.is_set():
                return
            if line == "":
                if data:
                    event, data = "\n".join(data), []
                    if event.strip() == "[DONE]":
                        self._end(upstream_reason)
                        return
                    upstream_reason = self._on_event(event) or upstream_reason
                continue
            if line.startswith(":"):
                continue  # a comment: keep-alive
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value[1:] if value.startswith(" ") else value)
            # event:, id: and retry: carry nothing for chat completions.
        if self._cancel.is_set():
            return  # the stream ended because we shut it down
        if data:  # the server closed without the blank line after its last event
            event = "\n".join(data)
            if event.strip() == "[DONE]":
                self._end(upstream_reason)
                return
            upstream_reason = self._on_event(event) or upstream_reason
        if upstream_reason is not None:
            # Some servers close after the finish chunk (and its usage) without sending [DONE].
            self._end(upstream_reason)
            return
        raise AttemptError("the stream ended before the answer finished", retryable=True)

    def _on_event(self, event: str) -> str | None:
        """Handle one chunk; returns its finish_reason, if it has one."""
        try:
            chunk = json.loads(event)
        except ValueError:
            raise AttemptError(f"not JSON in the stream: {event[:80]!r}", retryable=True) from None
        if not isinstance(chunk, dict):
            return None
        if chunk.get("error"):
            # vLLM and others report a failure inside an already started stream like this.
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise AttemptError(f"the server reported: {str(message)[:_BODY_CHARS]}", retryable=True)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = {k: int(v) for k, v in usage.items() if isinstance(v, int)}
        reason: str | None = None
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            content = (choice.get("delta") or {}).get("content")
            if content:
                self._emit_text(str(content))
            if choice.get("finish_reason"):
                reason = str(choice["finish_reason"])
        return reason

    def _emit_text(self, text: str) -> None:
        with self._lock:
            if self._done.is_set():
                return
            now = time.monotonic()
            if self.ttft_s is None:
                self.ttft_s = now - self._submitted_at
            self._last_chunk_at = now
            self.text += text
            self.token_count += 1  # one chunk is one token on vLLM, SGLang and TGI; usage corrects it
            self._deltas.put(Delta(text, self.token_count, False, None))
            self._started.set()

    def _end(self, upstream_reason: str | None) -> None:
        self.upstream_finish_reason = upstream_reason
        completion = self.usage.get("completion_tokens")
        with self._lock:
            if completion is not None:
                self.token_count = completion
        self._finish("length" if upstream_reason == "length" else "stop")

    # ---- shared

    def _abort(self) -> None:
        """Set the cancel flag and close the connection under the reader thread.

        Shutting the socket down wakes a reader blocked in recv at once (closing it would not, on
        Linux); the server sees the disconnect and frees the request's slot.
        """
        self._cancel.set()
        with self._lock:
            response = self._response
        if response is None:
            return
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)
        else:
            try:
                response.close()
            except Exception:  # closing from another thread is best effort
                logger.debug("closing %s's stream failed", self.server.name, exc_info=True)

    def _tokens_so_far(self) -> int:
        return self.token_count

    def _finish(self, reason: FinishReason, error: str | None = None) -> None:
        super()._finish(reason, error)
        self._started.set()  # whoever waits for the first text learns that there will be none


def _describe_http_error(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect timed out"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {exc}" if str(exc) else "cannot connect"
    if isinstance(exc, httpx.ReadTimeout):
        return "read timed out"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"connection dropped: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _error_detail(body: bytes) -> str:
    """The message of an OpenAI-style error body, or the start of whatever else came back."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:_BODY_CHARS]
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed.get("detail", parsed))
        if isinstance(error, dict):
            error = error.get("message", error)
        return str(error)[:_BODY_CHARS]
    return text[:_BODY_CHARS]
