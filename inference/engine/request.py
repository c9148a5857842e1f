"""A generation request as callers see it: its settings, its streamed deltas, its handle.

`RequestHandle` turns the cumulative token ids a batcher produces into streamed text: incremental
detokenization, end of sequence, stop strings and length. Every batching mode feeds it the same
way, so callers never see which one runs.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

FinishReason = Literal["stop", "length", "cancelled", "error"]

# How long a consumer waits on an empty queue before checking the background thread is alive:
# short enough that a dead engine never hangs a consumer for long, long enough to cost nothing.
_POLL_S = 0.5


@dataclass
class SamplingParams:
    """Per-request generation settings; temperature 0 means greedy."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()


@dataclass
class Delta:
    """Newly decoded text for one request; the last one has `finished=True`."""

    text: str
    token_count: int
    finished: bool
    finish_reason: FinishReason | None
    error: str | None = None


class EngineError(RuntimeError):
    """The engine cannot accept or run a request."""


class DeltaQueue:
    """The consuming side of a handle: the Deltas its producer thread queues, read in order.

    Shared by the local `RequestHandle` and the remote server's handle, which produce differently
    but are read the same way: iterated to the final Delta, or polled with `next_delta` by a caller
    that must check other things meanwhile.
    """

    # How often an iterating consumer wakes on an empty queue (to check its producer is alive,
    # or a deadline): a subclass sets its own.
    poll_s = _POLL_S

    def __init__(self) -> None:
        self.finish_reason: FinishReason | None = None
        self.error: str | None = None
        self._deltas: queue.Queue[Delta] = queue.Queue()
        self._done = threading.Event()
        self._lock = threading.Lock()  # the producer's and cancel()'s: guards the end and what leads to it

    def _tokens_so_far(self) -> int:
        """How many tokens the request has produced (the final Delta carries the count)."""
        raise NotImplementedError

    def _finish(self, reason: FinishReason, error: str | None = None) -> None:
        """End the request without new text (cancel, error, shutdown); a second end is ignored."""
        with self._lock:
            if self._done.is_set():
                return
            self.finish_reason = reason
            self.error = error
            # Queue before marking done: a consumer that sees "done" must find the final Delta.
            self._deltas.put(Delta("", self._tokens_so_far(), True, reason, error))
            self._done.set()

    def next_delta(self, timeout: float) -> Delta | None:
        """The next Delta, or None when none came within `timeout`: the request may still wait
        for a free slot behind others, and a caller that must check other things (Stop, its own
        heartbeat) meanwhile gets control back."""
        try:
            return self._deltas.get(timeout=timeout)
        except queue.Empty:
            return None

    def __iter__(self) -> Iterator[Delta]:
        while True:
            delta = self.next_delta(self.poll_s)
            if delta is None:
                if self._done.is_set() and self._deltas.empty():
                    return  # iterated again after the final Delta was consumed
                continue
            yield delta
            if delta.finished:
                return


class RequestOwner(Protocol):
    """What a handle needs of the engine that made it (the `Engine`; tests pass a stand-in)."""

    def _decode(self, token_ids: list[int]) -> str: ...

    def _drop_from_batch(self, handle: RequestHandle) -> None: ...

    def _alive(self) -> bool: ...


class RequestHandle(DeltaQueue):
    """A submitted request: iterate it for `Delta`s, `cancel()` it from any thread."""

    def __init__(self, request_id: str, engine: RequestOwner, params: SamplingParams, eos_ids: set[int]) -> None:
        super().__init__()
        self.id = request_id
        self.params = params
        self.text = ""  # text emitted so far; the full answer once finished
        self.token_ids: list[int] = []
        self.ttft_s: float | None = None
        self.tokens_after_cancel = 0  # decode outputs that arrived after cancel(): at most 1 expected
        self._engine = engine
        self._eos_ids = eos_ids
        self._submitted_at = time.perf_counter()
        self._cancel_requested = False
        self._cancelled_at: float | None = None
        # Incremental detokenization state (see _text_of).
        self._decoded = ""
        self._prefix_offset = 0
        self._read_offset = 0

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    @property
    def cancelled_at(self) -> float | None:
        """When cancel() was called (time.monotonic()), or None."""
        return self._cancelled_at

    def cancel(self) -> None:
        """Stop generating; the iterator ends with finish_reason "cancelled"."""
        with self._lock:
            if self._done.is_set() or self._cancel_requested:
                return
            # Set the flag first: every output seen after this point counts as "after cancel".
            self._cancel_requested = True
            self._cancelled_at = time.monotonic()
        self._engine._drop_from_batch(self)
        self._finish("cancelled")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the request finished; returns False on timeout."""
        return self._done.wait(timeout)

    def next_delta(self, timeout: float) -> Delta | None:
        delta = super().next_delta(timeout)
        # Never wait forever: if the engine's thread died, end the request as an error.
        if delta is None and not self._done.is_set() and not self._engine._alive():
            self._finish("error", "generation thread stopped")
        return delta

    # ---- called by the batcher's background thread ----

    def _on_tokens(self, generated: list[int], final: bool) -> None:
        """Take the cumulative generated tokens, emit the new text, end on EOS, stop or length."""
        with self._lock:
            if self._cancel_requested:
                self.tokens_after_cancel += 1
                return
            if self._done.is_set():
                return
            if self.ttft_s is None and generated:
                self.ttft_s = time.perf_counter() - self._submitted_at
            self.token_ids = list(generated)
            ended_by_eos = bool(generated) and generated[-1] in self._eos_ids
            content = generated[:-1] if ended_by_eos else generated
            full = self._text_of(content)
            stop_at = _find_stop(full, self.params.stop, len(self.text))
            hit_stop = stop_at is not None
            if stop_at is not None:
                self._emit(full[:stop_at], "stop")
            elif final or ended_by_eos or len(generated) >= self.params.max_new_tokens:
                # Trailing U+FFFD at the very end means the model stopped mid-character; keep it.
                self._emit(full, "stop" if ended_by_eos else "length")
            else:
                self._emit(full[: _safe_end(full, self.params.stop)], None)
        if hit_stop and not final:
            # The batcher doesn't know about stop strings: free the request's slot now.
            self._engine._drop_from_batch(self)

    def _text_of(self, content: list[int]) -> str:
        """The decoded text of `content`, the tokens so far, without decoding all of them again.

        Decoding everything per token costs O(n) per token, which at 64 streams takes longer than
        the GPU's decode step. So, as vLLM does, decode a short window that starts a few tokens
        back and keep what the newest tokens add; a window ending in U+FFFD (a character split
        across tokens) is left pending until the next token completes it.
        """
        if len(content) < self._read_offset:  # never expected: start over rather than be wrong
            self._decoded, self._prefix_offset, self._read_offset = "", 0, 0
        prefix = self._engine._decode(content[self._prefix_offset : self._read_offset])
        window = self._engine._decode(content[self._prefix_offset :])
        if not window.startswith(prefix):  # the tokenizer merged across the boundary: full decode
            self._decoded = self._engine._decode(content)
            self._prefix_offset = self._read_offset = len(content)
            return self._decoded
        tail = window[len(prefix) :]
        if tail and not tail.endswith("\ufffd"):
            self._decoded += tail
            self._prefix_offset, self._read_offset = self._read_offset, len(content)
            return self._decoded
        return self._decoded + tail

    def _emit(self, text: str, finish_reason: FinishReason | None) -> None:
        """Queue the part of `text` not yet sent (caller holds the lock)."""
        new = text[len(self.text) :] if text.startswith(self.text) else ""
        if finish_reason is None and not new:
            return
        self.text += new
        if finish_reason is not None:
            self.finish_reason = finish_reason
        # Queue before marking done: a consumer that sees "done" must find the final Delta queued.
        self._deltas.put(Delta(new, len(self.token_ids), finish_reason is not None, finish_reason))
        if finish_reason is not None:
            self._done.set()

    def _tokens_so_far(self) -> int:
        return len(self.token_ids)


def _find_stop(text: str, stops: tuple[str, ...], emitted: int) -> int | None:
    """Index of the earliest stop string in `text`, searching only where a new match can start."""
    best: int | None = None
    for stop in stops:
        if not stop:
            continue
        # Text already emitted held no complete stop string, so start just before its end.
        idx = text.find(stop, max(0, emitted - len(stop) + 1))
        if idx != -1 and (best is None or idx < best):
            best = idx
    return best


def _safe_end(text: str, stops: tuple[str, ...]) -> int:
    """How much of `text` can be streamed now.

    Hold back a trailing U+FFFD (a multi-byte character split across tokens) and any suffix that
    could still grow into a stop string, because streamed text can't be taken back.
    """
    end = len(text)
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    for stop in stops:
        for k in range(min(len(stop) - 1, end), 0, -1):
            if text.endswith(stop[:k], 0, end):
                end -= k
                break
    return end
