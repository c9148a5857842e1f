"""The static batcher's scheduler: one KV cache slot per running request, one decode step for all.

Why not only transformers' ContinuousBatchingManager: on an H200 with the 7B shape it reached
~600 tok/s at 64 streams (bench/gpu_generation.py), while a CUDA-graphed decode step over a static
cache reaches several times that. Its paged cache and per-step Python scheduling cost more than the
forward pass itself. transformers' own static cache, on the other hand, keeps one position for the
whole batch, so it can't admit a request while others run. This batcher keeps both properties: a
static cache (``slots x max_context`` per layer, in `model_runner`) whose rows carry their own
positions, and a loop that admits new requests into free slots between decode steps.

The loop (one thread, the only one that touches the GPU):
1. admit: prefill waiting requests into free slots, within a token budget, and stream their
   first token. A prefill step is the longest a running request waits for its next token.
2. launch one decode step for every running slot: a CUDA graph replay per (batch bucket, context
   bucket) on CUDA, the same function eagerly elsewhere.
3. deliver the *previous* step's tokens while the GPU runs this one, so Python's detokenizing and
   stop-string checks overlap the forward pass. A request that ended one step ago has one wasted
   token computed for it, which is cheaper than a sync per step.
Out of memory shrinks the batch and requeues requests with their tokens kept.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

from ...request import EngineError, RequestHandle
from .model_runner import ModelRunner, cache_sizing, supports

T = TypeVar("T")

logger = logging.getLogger(__name__)

# Decode steps queued on the GPU ahead of Python's delivery of their tokens. Deeper hides more
# host jitter (GIL contention with the consumer threads); each level costs a finished request
# one more wasted token.
_PIPELINE_DEPTH = 2
# The most prompt tokens one prefill step may take: bounds how long running requests wait.
_DEFAULT_PREFILL_TOKENS = 8192


@dataclass
class _Request:
    handle: RequestHandle
    original: list[int]  # the prompt as submitted
    max_new: int
    prompt: list[int] = field(default_factory=list)  # what to prefill: the prompt, plus output after a preemption
    generated: list[int] = field(default_factory=list)
    slot: int | None = None
    pos: int = 0  # next cache position to write
    launched: int = 0  # tokens sampled for this request so far, including undelivered ones
    done: bool = False


@dataclass
class _Step:
    """A launched decode step whose tokens are not yet delivered."""

    owners: list[tuple[int, _Request]]
    tokens: Any  # pinned host tensor, filled asynchronously
    event: Any  # CUDA event, or None on the CPU


class StaticBatcher:
    """Runs requests for one `Engine` on a static slot cache; all public methods are thread-safe."""

    name: Literal["static"] = "static"

    def __init__(
        self,
        model: Any,
        eos_ids: set[int],
        slots: int,
        max_context: int,
        cuda_graphs: bool | None = None,
        prefill_tokens: int = _DEFAULT_PREFILL_TOKENS,
        compile: bool | None = None,
    ) -> None:
        """A started batcher with exactly these sizes (`start` checks the model and sizes them)."""
        self.model = model
        self.eos_ids = eos_ids
        self.on_cuda = next(model.parameters()).device.type == "cuda"
        self.cuda_graphs = cuda_graphs
        self.slots = slots
        self.max_context = max_context
        self.prefill_tokens = max(prefill_tokens, max_context)
        self.max_active = slots  # shrinks on out-of-memory
        self.oom_events = 0
        # Tests set this to raise inside a step ("prefill" or "decode"), e.g. an injected OOM.
        self.fault_hook: Callable[[str], None] | None = None

        self.runner: ModelRunner  # built by _setup, on the loop's thread
        self._lock = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._owner: list[_Request | None] = [None] * slots
        self._free: list[int] = list(range(slots))
        heapq.heapify(self._free)
        self._by_id: dict[str, _Request] = {}
        self._closed = False
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._pending: deque[_Step] = deque()
        # Everything that computes with torch happens on the loop's thread, the set-up included
        # (see `call` for why one thread); the constructor waits for it.
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._loop, args=(ready, compile), name="engine-slots", daemon=True)
        self._thread.start()
        ready.result()

    def _setup(self, compile: bool | None) -> None:
        """Build the model runner (weights, kernels, cache) and the host buffers (on the loop's thread)."""
        import torch

        self.runner = ModelRunner(self.model, self.slots, self.max_context, self.cuda_graphs, compile)
        pin = self.on_cuda
        # Host buffers for the asynchronous copies, one per step that can be in flight, plus one:
        # a buffer is reused only after the step that used it was delivered (synchronized).
        ring = _PIPELINE_DEPTH + 1
        self._host_positions = [torch.zeros(self.slots, dtype=torch.long, pin_memory=pin) for _ in range(ring)]
        self._host_tokens = [torch.zeros(self.slots, dtype=torch.long, pin_memory=pin) for _ in range(ring)]
        self._next_host_buffer = 0  # index into the ring above, advanced by each launched step

    @classmethod
    def start(
        cls,
        model: Any,
        eos_ids: set[int],
        *,
        max_batch: int,
        max_context: int | None,
        cache_bytes: int | None,
        compile: bool | None,
    ) -> StaticBatcher:
        """Check the model, size the cache within its budget, start, and capture the graphs.

        Out of memory while allocating halves the slots and tries again: free memory was measured,
        but other processes may share the GPU.
        """
        import torch

        reason = supports(model)
        if reason:
            raise EngineError(reason)
        slots, context = cache_sizing(model, max_batch, max_context, cache_bytes)
        while True:
            try:
                batcher = cls(model, eos_ids, slots=slots, max_context=context, compile=compile)
                break
            except torch.OutOfMemoryError:
                if slots == 1:
                    raise
                slots //= 2
                logger.warning("out of memory allocating the KV cache; retrying with %d slots", slots)
        batcher.warm_up()
        logger.info("static batching: %d slots of %d tokens", batcher.slots, batcher.max_context)
        return batcher

    # ------------------------------------------------------------------ public, any thread

    def submit(self, handle: RequestHandle, prompt_ids: list[int]) -> None:
        if len(prompt_ids) >= self.max_context:
            handle._finish(
                "error", f"the prompt has {len(prompt_ids)} tokens; this engine's context holds {self.max_context}"
            )
            return
        # A request may not outgrow its slot: the answer ends by length at the context's end.
        max_new = min(handle.params.max_new_tokens, self.max_context - len(prompt_ids))
        with self._lock:
            if self._closed:
                raise EngineError("engine is closed")
            request = _Request(handle, list(prompt_ids), max_new, prompt=list(prompt_ids))
            self._by_id[handle.id] = request
            self._waiting.append(request)
            self._lock.notify_all()

    def cancel(self, handle: RequestHandle) -> None:
        """Drop a request and free its slot now; a step already running for it is ignored."""
        with self._lock:
            request = self._by_id.pop(handle.id, None)
            if request is None:
                return
            request.done = True
            if request.slot is None:
                with contextlib.suppress(ValueError):  # not in the queue any more
                    self._waiting.remove(request)
            else:
                self._release(request)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on this loop's thread, between two steps, and return its result.

        Why: torch on the CPU runs each thread's work on that thread's own OpenMP team, and once
        two teams exist libgomp stops spinning and sleeps between parallel regions (it sees more
        threads than cores). On 2 cores a SmolLM2 step then takes ~57 ms instead of ~34 ms. So
        the worker's other torch work (question and document embeddings, reranking) runs here,
        on the one thread that already owns a team; each call delays the running requests' next
        token by its own duration.
        """
        if threading.current_thread() is self._thread or not self.alive():
            return fn()
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                return fn()
            self._calls.append((fn, future))
            self._lock.notify_all()
        return future.result()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        if not self._thread.is_alive():
            # A closed engine may stay referenced (a caller's variable, a test): its KV cache, graph
            # memory and fused weights must not stay with it, or the next engine on the card starts
            # short (on the H100 bench: 7.9 GiB more at the next engine's start).
            self.runner.release()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "slots": self.slots,
                "slots_in_use": sum(owner is not None for owner in self._owner),
                "waiting": len(self._waiting),
                "max_active": self.max_active,
                "oom_events": self.oom_events,
                "graphs": len(self.runner.graphs),
            }

    def warm_up(self) -> None:
        """Capture every decode graph now, on the loop's thread, before a request needs one (CUDA)."""
        if self.runner.cuda_graphs:
            self.call(self.runner.capture_all)

    # ------------------------------------------------------------------ the loop thread

    def _loop(self, ready: Future[None], compile: bool | None) -> None:
        import torch

        try:
            self._setup(compile)
        except BaseException as exc:  # noqa: BLE001 - raised in the constructor
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            with torch.inference_mode():
                while True:
                    with self._lock:
                        idle = (
                            not self._waiting and all(o is None for o in self._owner) and not self._pending
                            and not self._calls
                        )
                        if self._closed:
                            break
                        if idle:
                            self._lock.wait(timeout=0.5)
                            continue
                        calls = list(self._calls)
                        self._calls.clear()
                    _run_calls(calls)
                    self._admit()
                    step = self._launch()
                    if step is not None:
                        self._pending.append(step)
                    # Keep up to _PIPELINE_DEPTH steps queued on the GPU while Python delivers.
                    while self._pending and (step is None or len(self._pending) > _PIPELINE_DEPTH):
                        self._deliver(self._pending.popleft())
        except Exception:
            logger.exception("static batching loop crashed")
        finally:
            self._fail_all("generation thread stopped")

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            requests = list(self._by_id.values())
            self._by_id.clear()
            self._waiting.clear()
            calls = list(self._calls)
            self._calls.clear()
        for request in requests:
            request.handle._finish("error", reason)
        _run_calls(calls)  # the loop is gone: run them on the callers' behalf

    def _release(self, request: _Request) -> None:
        """Give the request's slot back (caller holds the lock)."""
        slot = request.slot
        if slot is not None and self._owner[slot] is request:
            self._owner[slot] = None
            heapq.heappush(self._free, slot)
        request.slot = None

    def _end(self, request: _Request) -> None:
        with self._lock:
            request.done = True
            self._by_id.pop(request.handle.id, None)
            self._release(request)

    # ---- admission and prefill

    def _admit(self) -> None:
        import torch

        with self._lock:
            running = sum(o is not None for o in self._owner)
            batch: list[_Request] = []
            budget = self.prefill_tokens
            while self._waiting and self._free and running + len(batch) < self.max_active:
                request = self._waiting[0]
                if batch and len(request.prompt) * (len(batch) + 1) > budget:
                    break  # padded to the longest prompt: keep the step within its budget
                self._waiting.popleft()
                request.slot = heapq.heappop(self._free)
                self._owner[request.slot] = request
                batch.append(request)
        if not batch:
            return
        try:
            if self.fault_hook is not None:
                self.fault_hook("prefill")
            slots = cast("list[int]", [r.slot for r in batch])  # admitted: every one holds a slot
            first = self.runner.prefill([r.prompt for r in batch], slots, [r.handle.params for r in batch])
        except torch.OutOfMemoryError as exc:
            self._on_oom(batch, exc, "prefill")
            return
        except Exception as exc:
            logger.exception("prefill failed")
            for request in batch:
                self._end(request)
                request.handle._finish("error", f"generation failed: {type(exc).__name__}: {exc}")
            return
        for request, token in zip(batch, first, strict=True):
            request.pos = len(request.prompt)
            request.launched += 1
            self._take(request, token)

    # ---- decode

    def _launch(self) -> _Step | None:
        """Start one decode step for every running slot; returns without waiting for the GPU."""
        import torch

        with self._lock:
            owners = [
                (slot, r) for slot, r in enumerate(self._owner) if r is not None and r.launched < r.max_new
            ]
        if not owners:
            return None
        top = owners[-1][0] + 1
        runner = self.runner
        batch = runner.batch_bucket(top)
        context = runner.context_bucket(max(r.pos for _, r in owners) + 1)
        host_positions = self._host_positions[self._next_host_buffer]
        host_tokens = self._host_tokens[self._next_host_buffer]
        self._next_host_buffer = (self._next_host_buffer + 1) % len(self._host_tokens)
        host_positions.zero_()
        for slot, request in owners:
            host_positions[slot] = request.pos
        try:
            if self.fault_hook is not None:
                self.fault_hook("decode")
            runner.launch_decode(batch, context, host_positions)
            params = [r.handle.params for _, r in owners]
            if any(p.temperature > 0 for p in params):
                runner.resample([slot for slot, _ in owners], params)
        except torch.OutOfMemoryError as exc:
            while self._pending:
                self._deliver(self._pending.popleft())
            self._on_oom([r for _, r in owners], exc, "decode")
            return None
        for _, request in owners:
            request.pos += 1
            request.launched += 1
        runner.copy_tokens(host_tokens, batch)
        event = None
        if self.on_cuda:
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]  # torch leaves it untyped
            event.record()
        return _Step(owners, host_tokens, event)

    # ---- delivery

    def _deliver(self, step: _Step) -> None:
        if step.event is not None:
            step.event.synchronize()
        tokens = step.tokens.tolist()
        for slot, request in step.owners:
            if not request.done:
                self._take(request, int(tokens[slot]))

    def _take(self, request: _Request, token: int) -> None:
        """Hand one new token to the request's handle; end the request if that finished it."""
        request.generated.append(token)
        final = len(request.generated) >= request.max_new
        handle = request.handle
        handle._on_tokens(request.generated, final=final)
        if final or token in self.eos_ids or handle.finished:
            self._end(request)

    # ---- out of memory

    def _on_oom(self, requests: list[_Request], exc: BaseException, where: str) -> None:
        """Shrink the batch and retry: requests go back to the queue with their tokens kept.

        A request that fails alone can't be served at all and ends as an error.
        """
        import torch

        self.oom_events += 1
        if self.on_cuda:
            torch.cuda.empty_cache()
        live = [r for r in requests if not r.done]
        if len(live) <= 1 and (where == "prefill" or self.max_active == 1 or len(live) == 0):
            for request in live:
                self._end(request)
                request.handle._finish(
                    "error",
                    f"out of GPU memory: this request ({len(request.prompt)} prompt tokens) does not fit even alone",
                )
            logger.error("out of memory in %s; failed %d request(s) that can't fit alone", where, len(live))
            return
        with self._lock:
            if where == "decode":
                self.max_active = max(1, min(self.max_active, len(live)) // 2)
                # Preempt the half in the highest slots, so the running batch shrinks to a lower
                # graph bucket (recomputed on re-admission): their cache rows are dropped, the
                # prompt becomes prompt + what was generated, and the handle keeps streaming.
                victims = sorted(live, key=lambda r: r.slot if r.slot is not None else -1)[max(1, len(live) // 2):]
            else:  # prefill: a smaller prefill step, and this batch back to the queue as it was
                self.prefill_tokens = max(1, self.prefill_tokens // 2)
                victims = live
            for request in reversed(victims):
                self._release(request)
                request.prompt = request.original + request.generated
                request.launched = len(request.generated)
                self._waiting.appendleft(request)
        logger.warning(
            "out of memory in %s: batch limit now %d, %d request(s) requeued (%s)", where, self.max_active,
            len(victims), exc,
        )


def _run_calls(calls: list[tuple[Callable[[], Any], Future[Any]]]) -> None:
    """Run queued `StaticBatcher.call` functions, handing each result or exception to its caller."""
    for fn, future in calls:
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            future.set_exception(exc)

