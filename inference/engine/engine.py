"""One shared generation engine per worker: continuous batching, streaming, cancellation.

Many threads submit requests to one `Engine`. Three backends, tried in this order by "auto":
- "static" (`slots.py`): our static-slot continuous batching with CUDA-graphed decode steps, for
  Llama-family models. The fastest by far on the GPU (bench/gpu_generation.py).
- "continuous": transformers' `ContinuousBatchingManager` runs every request in shared forward
  passes, and a single dispatcher thread routes its outputs to per-request handles. Any model
  type with paged attention support.
- "simple": a worker thread runs plain `model.generate` for one request at a time.
All of them feed the same detokenization and stop-string logic, so callers never see the difference.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)

Batching = Literal["auto", "static", "continuous", "simple"]
BackendName = Literal["static", "continuous", "simple"]
FinishReason = Literal["stop", "length", "cancelled", "error"]

# How long a consumer waits on an empty queue before checking the background thread is alive:
# short enough that a dead engine never hangs a consumer for long, long enough to cost nothing.
_POLL_S = 0.5
# Outputs for cancelled requests can still arrive for a step or two; keep the handle routable
# that long so `tokens_after_cancel` is counted, then forget it.
_CANCELLED_KEEP_S = 30.0
# Placeholder sampling defaults for the CB manager. transformers only builds a temperature or
# top-p processor when the manager's GenerationConfig differs from 1.0, and only built processors
# accept per-request values; every request overrides all three.
_CB_DEFAULT_TEMPERATURE = 0.7
_CB_DEFAULT_TOP_P = 0.9


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


class RequestHandle:
    """A submitted request: iterate it for `Delta`s, `cancel()` it from any thread."""

    def __init__(self, request_id: str, engine: Engine, params: SamplingParams, eos_ids: set[int]) -> None:
        self.id = request_id
        self.params = params
        self.text = ""  # text emitted so far; the full answer once finished
        self.token_ids: list[int] = []
        self.finish_reason: FinishReason | None = None
        self.error: str | None = None
        self.ttft_s: float | None = None
        self.tokens_after_cancel = 0  # decode outputs that arrived after cancel(): at most 1 expected
        self._engine = engine
        self._eos_ids = eos_ids
        self._submitted_at = time.perf_counter()
        self._cancel_requested = False
        self._cancelled_at: float | None = None
        self._deltas: queue.Queue[Delta] = queue.Queue()
        self._done = threading.Event()
        self._lock = threading.Lock()
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

    def cancel(self) -> None:
        """Stop generating; the iterator ends with finish_reason "cancelled"."""
        with self._lock:
            if self._done.is_set() or self._cancel_requested:
                return
            # Set the flag first: every output seen after this point counts as "after cancel".
            self._cancel_requested = True
            self._cancelled_at = time.monotonic()
        self._engine._cancel_backend(self)
        self._finish("cancelled")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the request finished; returns False on timeout."""
        return self._done.wait(timeout)

    def __iter__(self) -> Iterator[Delta]:
        while True:
            try:
                delta = self._deltas.get(timeout=_POLL_S)
            except queue.Empty:
                if self._done.is_set():
                    return  # iterated again after the final Delta was consumed
                # Never block forever: if the engine's thread died, end the request as an error.
                if not self._engine._alive():
                    self._finish("error", "generation thread stopped")
                continue
            yield delta
            if delta.finished:
                return

    # ---- called by the engine's background thread ----

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
            # The backend doesn't know about stop strings: free the request's slot now.
            self._engine._cancel_backend(self)

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

    def _finish(self, reason: FinishReason, error: str | None = None) -> None:
        """End the request without new text (cancel, error, shutdown)."""
        with self._lock:
            if self._done.is_set():
                return
            self.finish_reason = reason
            self.error = error
            self._deltas.put(Delta("", len(self.token_ids), True, reason, error))
            self._done.set()


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


class Engine:
    """A model plus one generation backend, shared by all threads of a worker."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batching: Batching = "auto",
        max_batch: int = 16,
        cb_options: dict[str, Any] | None = None,
        max_context: int | None = None,
        cache_bytes: int | None = None,
        compile: bool | None = None,
    ) -> None:
        """Start serving `model`.

        `max_batch` caps concurrent requests. For the static backend, `max_context` is each slot's
        length (default: the model's, at most 4096 on a GPU and 2048 on the CPU) and `cache_bytes`
        its KV cache budget (default: 80% of free GPU memory less 4 GiB; 1 GiB on the CPU), which
        may lower the slot count; `compile` fuses its small kernels with torch.compile (default:
        on CUDA). `cb_options` overrides ContinuousBatchingConfig fields.
        """
        if batching not in ("auto", "static", "continuous", "simple"):
            raise ValueError(f"batching must be auto, static, continuous or simple, not {batching!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.cb_options = cb_options
        self.max_context = max_context
        self.cache_bytes = cache_bytes
        self.compile = compile
        self._slots: Any = None
        self.eos_ids = _eos_ids(model, tokenizer)
        self.sampling_in_batches = False  # True once CB accepts per-request temperature/top_p
        self._handles: dict[str, RequestHandle] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._mgr: Any = None
        # Simple path only: (handle, prompt ids) jobs; None tells the worker to exit.
        self._jobs: queue.Queue[tuple[RequestHandle, list[int]] | None] = queue.Queue()
        self.backend: BackendName = "simple"
        if batching in ("auto", "static"):
            try:
                self._start_static()
            except Exception as exc:
                self._stop_static()
                if batching == "static":
                    raise EngineError(f"static batching unavailable: {exc}") from exc
                logger.info("Static batching unavailable (%s); trying transformers' continuous batching", exc)
                self.backend = "simple"
        if self.backend == "simple" and batching in ("auto", "continuous"):
            try:
                self._start_continuous()
            except Exception as exc:
                if batching == "continuous":
                    self._stop_continuous()
                    raise EngineError(f"continuous batching unavailable: {exc}") from exc
                # "auto" prefers a working slow path to a crash: some model types or transformers
                # builds don't support paged attention.
                logger.warning("Continuous batching unavailable (%s); using the simple path", exc)
                self._stop_continuous()
                self.backend = "simple"
                self.sampling_in_batches = False
        if self.backend == "simple":
            self._start_simple()

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(
        cls,
        model_path: Path | str,
        device: str = "cpu",
        dtype: str | None = None,
        max_batch: int = 16,
        batching: Batching = "auto",
        cb_options: dict[str, Any] | None = None,
        quantization: str | None = "none",
        **options: Any,
    ) -> Engine:
        """Load a model folder (optionally quantized: "int8", "int4") and start serving it;
        `options` go to the constructor."""
        from .models import load_model

        model, tokenizer = load_model(model_path, device=device, dtype=dtype, quantization=quantization)
        return cls(model, tokenizer, batching=batching, max_batch=max_batch, cb_options=cb_options, **options)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        batching: Batching = "auto",
        max_batch: int = 16,
        cb_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> Engine:
        """Serve an already loaded model (tests use a tiny random one)."""
        model.eval()
        return cls(model, tokenizer, batching=batching, max_batch=max_batch, cb_options=cb_options, **options)

    # ------------------------------------------------------------------ public API

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of `messages` in the model's chat template, ready for the assistant's turn."""
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        # transformers 5.x may return a BatchEncoding (return_dict defaults differ across releases).
        if hasattr(ids, "keys") and "input_ids" in ids:
            ids = ids["input_ids"]
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return [int(i) for i in ids]

    def submit(self, prompt_ids: list[int], params: SamplingParams | None = None) -> RequestHandle:
        """Queue a request and return at once; safe to call from many threads."""
        params = params or SamplingParams()
        if not prompt_ids:
            raise ValueError("prompt_ids is empty")
        if self._closed:
            raise EngineError("engine is closed")
        handle = RequestHandle(f"dsw-{next(self._ids)}", self, params, self.eos_ids)
        prompt_ids = [int(i) for i in prompt_ids]
        vocab = _vocab_size(self.model)
        if any(i < 0 or i >= vocab for i in prompt_ids):
            # Checked here because an out-of-range id would crash the shared CB loop for everyone.
            handle._finish("error", f"prompt has token ids outside the vocabulary (0..{vocab - 1})")
            return handle
        if params.max_new_tokens <= 0:
            handle._finish("length")
            return handle
        if not self._alive():
            handle._finish("error", "engine is not running")
            return handle
        deadline = time.monotonic() + 30
        try:
            while True:
                # One lock around register + enqueue: the dispatcher may swap in a new manager.
                with self._lock:
                    if self.backend == "static":
                        self._slots.submit(handle, prompt_ids)
                        return handle
                    if self.backend == "simple":
                        self._handles[handle.id] = handle
                        self._jobs.put((handle, prompt_ids))
                        return handle
                    if self._mgr is not None and self._mgr.is_running():
                        self._handles[handle.id] = handle
                        self._submit_continuous(handle, prompt_ids)
                        return handle
                # The batching loop died and the dispatcher is replacing it: wait, don't fail.
                if time.monotonic() > deadline or not self._alive():
                    raise EngineError("continuous batching loop is not running")
                time.sleep(0.05)
        except Exception as exc:
            with self._lock:
                self._handles.pop(handle.id, None)
            handle._finish("error", f"submit failed: {exc}")
        return handle

    def generate(self, prompt_ids: list[int], params: SamplingParams | None = None) -> str:
        """Blocking convenience: the whole answer as one string."""
        handle = self.submit(prompt_ids, params)
        for delta in handle:
            if delta.finish_reason == "error":
                raise EngineError(delta.error or "generation failed")
        return handle.text

    def close(self) -> None:
        """Stop the background threads; unfinished requests end as errors."""
        if self._closed:
            return
        self._closed = True
        if self.backend == "static":
            self._stop_static()
        elif self.backend == "continuous":
            self._stop_continuous()
        else:
            self._jobs.put(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        with self._lock:
            pending = list(self._handles.values())
            self._handles.clear()
        for handle in pending:
            handle._finish("error", "engine closed")

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ shared helpers

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _alive(self) -> bool:
        """Whether the background thread runs. The CB dispatcher outlives (and replaces) a dead
        batching loop, and exits only when it can't, so its thread alone tells."""
        if self.backend == "static":
            return self._slots is not None and self._slots.alive()
        return self._thread is not None and self._thread.is_alive()

    def call(self, fn: Callable[[], T]) -> T:
        """Run other torch work (embeddings, reranking) on the engine's own thread when it has
        one (static batching; see SlotBackend.call for why), else right here."""
        if self._slots is not None:
            result: T = self._slots.call(fn)
            return result
        return fn()

    def stats(self) -> dict[str, int]:
        """Slot use of the static backend (empty for the others): tests and health pages read it."""
        return self._slots.stats() if self._slots is not None else {}

    def _forget(self, handle: RequestHandle) -> None:
        with self._lock:
            self._handles.pop(handle.id, None)

    def _cancel_backend(self, handle: RequestHandle) -> None:
        """Tell the backend to drop a request (user cancel, stop string, early EOS)."""
        if self._slots is not None:
            self._slots.cancel(handle)
        if self._mgr is not None:
            try:
                self._mgr.cancel_request(handle.id)
            except Exception:  # the manager may be shutting down; the handle is ended anyway
                logger.exception("cancel_request failed for %s", handle.id)
        # The simple path polls handle.cancel_requested / handle.finished between steps.

    # ------------------------------------------------------------------ static slots

    def _start_static(self) -> None:
        """Start the slot backend (it checks the model and sizes its cache) and prove it with one
        tiny request."""
        from .slots import SlotBackend

        self._slots = SlotBackend.start(
            self.model, self.eos_ids, max_batch=self.max_batch, max_context=self.max_context,
            cache_bytes=self.cache_bytes, compile=self.compile,
        )
        self.backend = "static"
        self.sampling_in_batches = True
        probe = self.submit([int(next(iter(self.eos_ids), 0))], SamplingParams(max_new_tokens=2))
        if not probe.wait(timeout=120) or probe.finish_reason == "error":
            raise EngineError(f"warmup request failed: {probe.error or 'timeout'}")
        logger.info("static batching: %d slots of %d tokens", self._slots.slots, self._slots.max_context)

    def _stop_static(self) -> None:
        if self._slots is not None:
            self._slots.close()
            self._slots = None

    # ------------------------------------------------------------------ continuous batching

    def _start_continuous(self) -> None:
        """Create the CB manager, the dispatcher, and prove both work with one tiny request."""
        if not hasattr(self.model, "init_continuous_batching"):
            raise EngineError("this transformers build has no continuous batching")
        self._mgr = self._new_manager()
        self.backend = "continuous"  # submit() routes by this, and the probe below uses submit()
        self._thread = threading.Thread(target=self._dispatch_loop, name="engine-dispatch", daemon=True)
        self._thread.start()
        # Warm up through the real path: a model type whose paged attention breaks fails here,
        # at startup, instead of on a user's first turn.
        probe = self.submit([int(next(iter(self.eos_ids), 0))], SamplingParams(max_new_tokens=2))
        if not probe.wait(timeout=120) or probe.finish_reason == "error":
            raise EngineError(f"warmup request failed: {probe.error or 'timeout'}")

    def _new_manager(self) -> Any:
        """A started ContinuousBatchingManager configured for per-request sampling where possible."""
        from transformers import GenerationConfig

        on_cpu = getattr(getattr(self.model, "device", None), "type", "cpu") == "cpu"
        cb_config, per_request = _cb_config(self.max_batch, on_cpu, self.cb_options)
        self.sampling_in_batches = per_request
        eos = sorted(self.eos_ids) or [-1]
        if per_request:
            # do_sample stays on for every request: greedy requests pass top_k=1, which leaves one
            # candidate, so multinomial sampling returns exactly the argmax.
            gen_config = GenerationConfig(
                do_sample=True,
                temperature=_CB_DEFAULT_TEMPERATURE,
                top_k=1,
                top_p=_CB_DEFAULT_TOP_P,
                max_new_tokens=512,
                eos_token_id=eos,
            )
        else:
            gen_config = GenerationConfig(do_sample=False, max_new_tokens=512, eos_token_id=eos)
        kwargs: dict[str, Any] = {"generation_config": gen_config}
        if cb_config is not None:
            kwargs["continuous_batching_config"] = cb_config
        mgr = self.model.init_continuous_batching(**kwargs)
        mgr.start()
        return mgr

    def _restart_manager(self) -> bool:
        """Replace a manager whose loop died (an exception in a forward pass is fatal to it).

        Its in-flight requests were already failed with the error; anything that slipped in
        since is failed here. Returns False if no new manager could be started.
        """
        old = self._mgr
        fatal = getattr(getattr(old, "background_thread_status", None), "fatal_error", None)
        logger.error("continuous batching loop died (%s); starting a new one", fatal)
        try:
            old.stop(block=True, timeout=10)  # restores the attention implementation
        except Exception:
            logger.exception("stopping the dead manager failed")
        with self._lock:
            pending = list(self._handles.values())
            self._handles.clear()
            try:
                self._mgr = self._new_manager()
            except Exception:
                logger.exception("could not restart continuous batching")
                return False
        for handle in pending:
            handle._finish("error", f"generation failed: {fatal}")
        return True

    def _submit_continuous(self, handle: RequestHandle, prompt_ids: list[int]) -> None:
        params = handle.params
        extra: dict[str, Any] = {}
        if self.sampling_in_batches:
            if params.temperature > 0:
                # top_k = vocabulary size turns top-k off for this request.
                extra = {
                    "temperature": float(params.temperature),
                    "top_k": _vocab_size(self.model),
                    "top_p": float(params.top_p),
                }
            else:
                extra = {"temperature": 1.0, "top_k": 1, "top_p": 1.0}
        elif params.temperature > 0:
            logger.warning("This transformers build can't sample per request in batches; decoding greedily")
        rid = self._mgr.add_request(
            prompt_ids, request_id=handle.id, max_new_tokens=params.max_new_tokens, streaming=True, **extra
        )
        if rid is None:  # the manager refuses requests while stopping
            raise EngineError("continuous batching manager is not accepting requests")

    def _dispatch_loop(self) -> None:
        """Route every manager output to its handle; the one consumer of the shared output queue."""
        last_sweep = time.monotonic()
        try:
            while not self._closed:
                # `_stop_continuous` clears the manager, possibly while this loop still waits on it
                # (its join gives up after 5 s): read it once per pass and stop when it is gone.
                mgr = self._mgr
                if mgr is None:
                    break
                output = mgr.get_result(timeout=0.1)
                if output is None:
                    if not mgr.is_running() and (self._closed or not self._restart_manager()):
                        break
                else:
                    self._route(output)
                if time.monotonic() - last_sweep > 1.0:
                    last_sweep = time.monotonic()
                    self._sweep_cancelled()
        except Exception:
            logger.exception("engine dispatcher crashed")
        finally:
            self._fail_pending("generation thread stopped")

    def _route(self, output: Any) -> None:
        with self._lock:
            handle = self._handles.get(output.request_id)
        if handle is None:
            return
        finished = bool(output.is_finished())
        if getattr(output, "error", None):
            handle._finish("error", str(output.error))
        else:
            handle._on_tokens(list(output.generated_tokens), final=finished)
        if finished or (handle.finished and not handle.cancel_requested):
            self._forget(handle)

    def _sweep_cancelled(self) -> None:
        """Drop cancelled handles once no late output can still arrive for them."""
        now = time.monotonic()
        with self._lock:
            stale = [
                h.id
                for h in self._handles.values()
                if h._cancelled_at is not None and now - h._cancelled_at > _CANCELLED_KEEP_S
            ]
            for rid in stale:
                self._handles.pop(rid, None)

    def _fail_pending(self, reason: str) -> None:
        with self._lock:
            pending = list(self._handles.values())
            self._handles.clear()
        for handle in pending:
            handle._finish("error", reason)

    def _stop_continuous(self) -> None:
        if self._mgr is None:
            return
        try:
            # hard_stop fails in-flight requests instead of finishing them: closing shouldn't wait.
            self._mgr.stop(block=True, timeout=30, **_supported_kwargs(self._mgr.stop, hard_stop=True))
        except Exception:
            logger.exception("stopping the continuous batching manager failed")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._mgr = None
        self._thread = None

    # ------------------------------------------------------------------ simple path

    def _start_simple(self) -> None:
        self._thread = threading.Thread(target=self._simple_loop, name="engine-simple", daemon=True)
        self._thread.start()

    def _simple_loop(self) -> None:
        """Serve queued requests one at a time with `model.generate`."""
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    break
                handle, prompt_ids = job
                if handle.finished:  # cancelled while queued
                    self._forget(handle)
                    continue
                try:
                    self._simple_run(handle, prompt_ids)
                except Exception as exc:
                    logger.exception("generation failed for %s", handle.id)
                    handle._finish("error", f"{type(exc).__name__}: {exc}")
                finally:
                    self._forget(handle)
        finally:
            self._fail_pending("generation thread stopped")

    def _simple_run(self, handle: RequestHandle, prompt_ids: list[int]) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        generated: list[int] = []

        class _Streamer(BaseStreamer):
            """Receives each new token from generate; the first call carries the prompt."""

            def __init__(self) -> None:
                self.seen_prompt = False

            def put(self, value: Any) -> None:
                if not self.seen_prompt:
                    self.seen_prompt = True
                    return
                generated.extend(int(t) for t in value.reshape(-1).tolist())
                handle._on_tokens(list(generated), final=False)

            def end(self) -> None:
                pass

        class _StopWhenDone(StoppingCriteria):
            """Checked after every decode step: cancel, stop string or EOS ends generate."""

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                done = handle.finished or handle.cancel_requested
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        params = handle.params
        sampling: dict[str, Any] = {"do_sample": False}
        if params.temperature > 0:
            sampling = {"do_sample": True, "temperature": float(params.temperature), "top_p": float(params.top_p), "top_k": 0}
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        with torch.inference_mode():
            self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=params.max_new_tokens,
                eos_token_id=sorted(self.eos_ids) or None,
                pad_token_id=_pad_id(self.tokenizer, self.eos_ids),
                streamer=_Streamer(),
                stopping_criteria=StoppingCriteriaList([_StopWhenDone()]),
                **sampling,
            )
        # generate returned: whatever didn't end by EOS or a stop string ended by length. A
        # cancelled handle is already finished, and this is no decode output to count.
        if not handle.cancel_requested:
            handle._on_tokens(list(generated), final=True)


# ---------------------------------------------------------------------- module helpers


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """All token ids that end a turn: generation config, model config and tokenizer may differ."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def _pad_id(tokenizer: Any, eos_ids: set[int]) -> int | None:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    return min(eos_ids) if eos_ids else None


def _vocab_size(model: Any) -> int:
    """top_k equal to the vocabulary disables top-k for sampled requests."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.vocab_size)


def _supported_kwargs(func: Any, **kwargs: Any) -> dict[str, Any]:
    """Keep only keyword arguments `func` accepts: signatures drift between transformers 5.x."""
    import inspect

    params = inspect.signature(func).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def _cb_config(max_batch: int, on_cpu: bool, overrides: dict[str, Any] | None) -> tuple[Any, bool]:
    """Build a ContinuousBatchingConfig with the fields this transformers version knows.

    Returns (config or None, whether per-request temperature/top_p are supported).
    """
    try:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
    except ImportError:  # older 5.x: everything lives on GenerationConfig, greedy only
        return None, False
    fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)} if dataclasses.is_dataclass(
        ContinuousBatchingConfig
    ) else set()
    wanted: dict[str, Any] = {
        "max_requests_per_batch": max_batch,
        # Per-request temperature/top_k/top_p: without it every request shares one setting.
        "per_request_processors": True,
    }
    if on_cpu:
        # By default the paged cache takes 60% of free memory, and on CPU (sdpa needs a dense mask of
        # batch tokens x cached tokens) zeroing that takes ~10 s and GBs. Size it for the batch:
        # 4 blocks of 256 tokens per request, prefill chunks of 1024 tokens.
        wanted.update(num_blocks=max(16, 4 * max_batch), max_batch_tokens=1024)
    wanted.update(overrides or {})
    kwargs = {k: v for k, v in wanted.items() if k in fields} if fields else {}
    try:
        config = ContinuousBatchingConfig(**kwargs)
    except TypeError:
        config = ContinuousBatchingConfig()
        kwargs = {}
    return config, "per_request_processors" in kwargs
