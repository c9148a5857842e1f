"""Where a chat turn's text comes from: the `ChatBackend` protocol and the local engine behind it.

A backend is a place a chat turn can be served: the worker's own engine (`LocalBackend`), or an
OpenAI-compatible server (`remote.RemoteServer`). Both answer `submit_chat(messages, params)` with
a `StreamHandle`: iterate it for `Delta`s, `cancel()` it from any thread, read `text`,
`finish_reason`, `error` and `ttft_s`. So the chat code streams from either without knowing which.

Framework-free like the rest of `inference.engine`: no Django, no torch (daphne may import it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from .request import Delta, FinishReason, SamplingParams

if TYPE_CHECKING:
    from .engine import Engine


class StreamHandle(Protocol):
    """What chat code needs of a running request, local or remote."""

    text: str
    finish_reason: FinishReason | None
    error: str | None
    ttft_s: float | None

    @property
    def finished(self) -> bool: ...

    def cancel(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...

    def next_delta(self, timeout: float) -> Delta | None: ...

    def __iter__(self) -> Iterator[Delta]: ...


class ChatBackend(Protocol):
    name: str

    def submit_chat(self, messages: Sequence[Mapping[str, str]], params: SamplingParams) -> StreamHandle: ...


class LocalBackend:
    """The worker's own engine behind `submit_chat`: the chat template, then the engine's queue."""

    def __init__(self, name: str, engine: Callable[[], Engine]) -> None:
        self.name = name
        self._engine = engine
        self.prompt_tokens: int | None = None

    def submit_chat(self, messages: Sequence[Mapping[str, str]], params: SamplingParams) -> StreamHandle:
        engine = self._engine()
        prompt_ids = engine.chat_prompt([dict(m) for m in messages])
        self.prompt_tokens = len(prompt_ids)
        return engine.submit(prompt_ids, params)
