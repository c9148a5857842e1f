"""What the `Engine` needs of a batching mode (`Batcher`), and what the modes share."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeVar

from ..request import RequestHandle

T = TypeVar("T")

BatchingName = Literal["static", "continuous", "simple"]


class Batcher(Protocol):
    """Runs submitted requests on a background thread and feeds their handles' `_on_tokens`.

    Each mode's `start` classmethod builds and starts one (the engine proves static and
    continuous batching with a tiny request before serving). All methods are safe to call from
    any thread.
    """

    @property
    def name(self) -> BatchingName:
        """Which mode this is."""
        ...

    def submit(self, handle: RequestHandle, prompt_ids: list[int]) -> None:
        """Queue a request; raises when it can't be accepted (the engine ends the handle)."""
        ...

    def cancel(self, handle: RequestHandle) -> None:
        """Stop computing tokens for a request (user cancel, stop string, early EOS)."""
        ...

    def alive(self) -> bool:
        """Whether the background thread still runs."""
        ...

    def call(self, fn: Callable[[], T]) -> T:
        """Run other torch work where it runs best for this mode (see StaticBatcher.call)."""
        ...

    def stats(self) -> dict[str, int]:
        """Slot use, where the mode has slots; empty otherwise."""
        ...

    def close(self) -> None:
        """Stop the background thread; unfinished requests end as errors."""
        ...


class HandleTable:
    """The running requests of a batcher whose background thread routes outputs to handles by id."""

    def __init__(self) -> None:
        # Also held by a batcher for what must change together with the table (continuous: the
        # manager it swaps in while a submit registers).
        self.lock = threading.Lock()
        self.by_id: dict[str, RequestHandle] = {}

    def get(self, request_id: str) -> RequestHandle | None:
        with self.lock:
            return self.by_id.get(request_id)

    def forget(self, handle: RequestHandle) -> None:
        with self.lock:
            self.by_id.pop(handle.id, None)

    def fail_all(self, reason: str) -> None:
        """End every request still in the table as an error."""
        with self.lock:
            pending = list(self.by_id.values())
            self.by_id.clear()
        for handle in pending:
            handle._finish("error", reason)


def vocab_size(model: Any) -> int:
    """The model's vocabulary size (of its text config, for multimodal models)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.vocab_size)
