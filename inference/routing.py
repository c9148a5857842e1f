"""Which backend answers a turn: the local engine, or one of INFERENCE_BACKENDS.

Policy, in order:
1. A sensitive turn is answered by the local model: its text must not leave the installation.
   The caller says whether it is, and why (`sensitive`): chat decides from its tenant and the
   knowledge bases the turn drew on (`chat.turns`), so routing knows nothing of either.
2. Otherwise every backend, the local engine included, is ranked by its recent time to first
   token, fastest first, and the healthy one ranked first serves. A remote that failed its health
   check is skipped; one that fails before its first token is marked unhealthy and the next is
   tried. A backend with no recent measurement ranks first, so a new or recovered one is measured
   instead of being starved by the others' old numbers. The local engine unmeasured ranks last:
   it gets measured anyway, on sensitive turns and on fallbacks.
3. The local engine answers when no remote backend did: it is always healthy while the worker
   runs, and a turn is never refused for want of a remote.

The latencies are an exponentially weighted moving average per backend, in Redis, so every
thread and process of every GPU worker ranks with the same numbers.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from deepseek_web.redis_client import fast_client
from inference.engine.backends import LocalBackend, StreamHandle
from inference.engine.remote import BackendConfigError, RemoteServer, RemoteServerConfig

if TYPE_CHECKING:
    from inference.engine import Engine, SamplingParams

logger = logging.getLogger(__name__)

LATENCY_KEY = "dsw:route:ttft:{name}"

# new = old * (1 - w) + sample * w, in one step, so concurrent turns never lose a sample.
_EWMA_SCRIPT = """
local old = redis.call('GET', KEYS[1])
local sample = tonumber(ARGV[1])
local value = sample
if old then value = tonumber(old) * (1 - tonumber(ARGV[2])) + sample * tonumber(ARGV[2]) end
redis.call('SET', KEYS[1], tostring(value), 'EX', tonumber(ARGV[3]))
return tostring(value)
"""

_servers_lock = threading.Lock()
_servers: tuple[str, list[RemoteServer]] | None = None  # (INFERENCE_BACKENDS as JSON, its servers)


@dataclass
class Attempt:
    """One candidate's part in routing a turn, as stored in the turn's timings."""

    name: str
    outcome: str  # served, skipped or failed
    reason: str = ""
    ttft_ewma_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "outcome": self.outcome}
        if self.reason:
            data["reason"] = self.reason
        if self.ttft_ewma_ms is not None:
            data["ttft_ewma_ms"] = round(self.ttft_ewma_ms, 1)
        return data


@dataclass
class Route:
    """The backend that took the turn, its running request, and how it was chosen."""

    backend: str
    handle: StreamHandle
    sensitive: str = ""  # why the turn had to stay local, or ""
    attempts: list[Attempt] = field(default_factory=list)
    local_prompt_tokens: int | None = None

    @property
    def prompt_tokens(self) -> int | None:
        """The prompt's length in tokens: counted locally, or as the remote server reported it."""
        if self.local_prompt_tokens is not None:
            return self.local_prompt_tokens
        usage = getattr(self.handle, "usage", None) or {}
        value = usage.get("prompt_tokens")
        return int(value) if value is not None else None

    def timings(self) -> dict[str, Any]:
        return {"backend": self.backend, "sensitive": self.sensitive or None,
                "candidates": [a.as_dict() for a in self.attempts]}


def local_name() -> str:
    from inference import runtime

    return runtime.backend_name()


def remote_backends() -> list[RemoteServer]:
    """The configured remote backends, built once per configuration and shared by all threads,
    so each keeps one connection pool and one cached health state."""
    global _servers
    raw = settings.INFERENCE_BACKENDS
    signature = json.dumps(raw, sort_keys=True, default=str)
    with _servers_lock:
        if _servers is not None and _servers[0] == signature:
            return _servers[1]
        built = [RemoteServer(config) for config in backend_configs(raw)]
        if _servers is not None:
            for old in _servers[1]:
                old.close()
        _servers = (signature, built)
        return built


def backend_configs(raw: object) -> list[RemoteServerConfig]:
    """INFERENCE_BACKENDS parsed and checked; the error names the entry and the field."""
    if not isinstance(raw, list):
        raise ImproperlyConfigured("INFERENCE_BACKENDS must be a JSON list of backends")
    configs: list[RemoteServerConfig] = []
    for entry in raw:
        if isinstance(entry, Mapping) and entry.get("api_key_env"):
            # The key from its own variable, so a secret store can provide it without the JSON.
            entry = {k: v for k, v in entry.items() if k != "api_key_env"} | {
                "api_key": os.environ.get(str(entry["api_key_env"]), "")}
        try:
            configs.append(RemoteServerConfig.from_dict(entry))
        except BackendConfigError as exc:
            raise ImproperlyConfigured(f"INFERENCE_BACKENDS: {exc}") from exc
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ImproperlyConfigured("INFERENCE_BACKENDS: backend names must be unique")
    return configs


# ---------------------------------------------------------------------- latency


def latency_record(*, name: str, ttft_s: float) -> float | None:
    """Adds one time-to-first-token sample; returns the new average in seconds (None if Redis failed)."""
    try:
        # The 1-second client: Redis being slow must not hold up a turn, which then routes without it.
        value = fast_client().eval(_EWMA_SCRIPT, 1, LATENCY_KEY.format(name=name), ttft_s,
                                   settings.INFERENCE_LATENCY_WEIGHT, settings.INFERENCE_LATENCY_TTL_S)
    except redis.RedisError:
        logger.warning("could not record %s's latency", name, exc_info=True)
        return None
    return float(value)


def latencies(names: Sequence[str]) -> dict[str, float | None]:
    """The recent average time to first token of each backend, in seconds; None when unmeasured."""
    if not names:
        return {}
    try:
        values = fast_client().mget([LATENCY_KEY.format(name=n) for n in names])
    except redis.RedisError:
        logger.warning("could not read backend latencies; ranking in configured order", exc_info=True)
        return dict.fromkeys(names)
    return {n: (float(v) if v is not None else None) for n, v in zip(names, values, strict=True)}


# ---------------------------------------------------------------------- routing


def chat_route(*, messages: Sequence[Mapping[str, str]], params: SamplingParams, sensitive: str = "",
               should_stop: Callable[[], bool] | None = None) -> Route:
    """Starts the turn on the backend the policy picks, and returns it once it streams.

    A remote backend is kept only after its first token: until then a failure moves on to the
    next candidate, and nothing was shown to the user. `should_stop` is polled while waiting
    (the Stop button); the route then ends with a cancelled handle.
    Raises whatever the local engine raises when it cannot start (the caller reports it).
    """
    attempts: list[Attempt] = []
    remotes = remote_backends()
    local = LocalBackend(local_name(), _local_engine)
    local_ms: float | None = None
    if sensitive:
        attempts += [Attempt(b.name, "skipped", f"sensitive: {sensitive}") for b in remotes]
    elif remotes:
        measured = latencies([b.name for b in remotes] + [local.name])
        local_ewma = measured[local.name]
        local_ms = local_ewma * 1000 if local_ewma is not None else None
        # Unmeasured first (see the module's docstring); ties keep the configured order.
        ranked: list[RemoteServer | None] = [*remotes, None]  # None: the local engine, last on ties
        ranked.sort(key=lambda b: measured[b.name] or 0.0 if b is not None else local_ewma or float("inf"))
        for backend in ranked:
            if backend is None:
                break  # the local engine ranks ahead of the remotes left
            ewma = measured[backend.name]
            ewma_ms = ewma * 1000 if ewma is not None else None
            route = _try_remote(backend, messages, params, should_stop, attempts, ewma_ms)
            if route is not None:
                route.attempts = attempts
                return route
    handle = local.submit_chat(messages, params)
    attempts.append(Attempt(local.name, "served", ttft_ewma_ms=local_ms))
    return Route(backend=local.name, handle=handle, sensitive=sensitive, attempts=attempts,
                 local_prompt_tokens=local.prompt_tokens)


def local_latency_record(route: Route) -> None:
    """After a locally served turn: its time to first token joins the local engine's average, so
    the local engine competes with the remotes on the same measure."""
    if route.local_prompt_tokens is not None and route.handle.ttft_s is not None:
        latency_record(name=route.backend, ttft_s=route.handle.ttft_s)


def _try_remote(backend: RemoteServer, messages: Sequence[Mapping[str, str]], params: SamplingParams,
                should_stop: Callable[[], bool] | None, attempts: list[Attempt],
                ewma_ms: float | None) -> Route | None:
    health = backend.health()
    if not health.ok:
        attempts.append(Attempt(backend.name, "skipped", f"unhealthy: {health.reason}", ewma_ms))
        return None
    handle = backend.submit_chat(messages, params)
    handle.wait_started(should_stop=should_stop)
    if handle.finish_reason == "error":
        reason = handle.error or "failed before its first token"
        # Later turns skip it until the health cache expires, instead of waiting on it again.
        backend.mark_unhealthy(reason)
        attempts.append(Attempt(backend.name, "failed", reason, ewma_ms))
        logger.warning("backend %s failed before its first token: %s", backend.name, reason)
        return None
    if handle.ttft_s is not None:
        latency_record(name=backend.name, ttft_s=handle.ttft_s)
    reason = "" if handle.attempts == 1 else f"after {handle.attempts} attempts: {handle.attempt_errors[-1]}"
    attempts.append(Attempt(backend.name, "served", reason, ewma_ms))
    return Route(backend=backend.name, handle=handle)


def _local_engine() -> Engine:
    from inference import runtime

    return runtime.get_engine()

