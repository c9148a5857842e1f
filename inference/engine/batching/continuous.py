"""The "continuous" batching mode: transformers' `ContinuousBatchingManager` plus one dispatcher.

The manager runs every request in shared forward passes over a paged cache (any model type with
paged attention support); a single dispatcher thread routes its outputs to per-request handles,
and replaces the manager when an exception in a forward pass killed its loop.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from ..request import EngineError, RequestHandle
from .base import HandleTable, vocab_size

T = TypeVar("T")

logger = logging.getLogger(__name__)

# Outputs for cancelled requests can still arrive for a step or two; keep the handle routable
# that long so `tokens_after_cancel` is counted, then forget it.
_CANCELLED_KEEP_S = 30.0
# Placeholder sampling defaults for the CB manager. transformers only builds a temperature or
# top-p processor when the manager's GenerationConfig differs from 1.0, and only built processors
# accept per-request values; every request overrides all three.
_CB_DEFAULT_TEMPERATURE = 0.7
_CB_DEFAULT_TOP_P = 0.9
# How long a submit waits for the dispatcher to replace a dead manager before it fails.
_SUBMIT_WAIT_S = 30


class ContinuousBatcher:
    """One ContinuousBatchingManager and the dispatcher thread that routes its outputs."""

    name: Literal["continuous"] = "continuous"

    def __init__(self, model: Any, eos_ids: set[int], max_batch: int, cb_options: dict[str, Any] | None) -> None:
        self.model = model
        self.eos_ids = eos_ids
        self.max_batch = max_batch
        self.cb_options = cb_options
        self.sampling_in_batches = False  # True once the manager accepts per-request temperature/top_p
        self._handles = HandleTable()  # its lock also guards swapping in a new manager
        self._closed = False
        self._mgr: Any = None
        self._thread = threading.Thread(target=self._dispatch_loop, name="engine-dispatch", daemon=True)

    @classmethod
    def start(
        cls, model: Any, eos_ids: set[int], *, max_batch: int, cb_options: dict[str, Any] | None
    ) -> ContinuousBatcher:
        """Create the CB manager and start the dispatcher."""
        if not hasattr(model, "init_continuous_batching"):
            raise EngineError("this transformers build has no continuous batching")
        batcher = cls(model, eos_ids, max_batch, cb_options)
        batcher._mgr = batcher._new_manager()
        batcher._thread.start()
        return batcher

    # ------------------------------------------------------------------ public, any thread

    def submit(self, handle: RequestHandle, prompt_ids: list[int]) -> None:
        deadline = time.monotonic() + _SUBMIT_WAIT_S
        try:
            while True:
                # One lock around register + enqueue: the dispatcher may swap in a new manager.
                with self._handles.lock:
                    if self._mgr is not None and self._mgr.is_running():
                        self._handles.by_id[handle.id] = handle
                        self._add_request(handle, prompt_ids)
                        return
                # The batching loop died and the dispatcher is replacing it: wait, don't fail.
                if time.monotonic() > deadline or not self.alive():
                    raise EngineError("continuous batching loop is not running")
                time.sleep(0.05)
        except Exception:
            self._handles.forget(handle)
            raise

    def cancel(self, handle: RequestHandle) -> None:
        mgr = self._mgr
        if mgr is None:
            return
        try:
            mgr.cancel_request(handle.id)
        except Exception:  # the manager may be shutting down; the handle is ended anyway
            logger.exception("cancel_request failed for %s", handle.id)

    def alive(self) -> bool:
        """The dispatcher outlives (and replaces) a dead batching loop, and exits only when it
        can't, so its thread alone tells."""
        return self._thread.is_alive()

    def call(self, fn: Callable[[], T]) -> T:
        return fn()

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self._closed = True
        if self._mgr is not None:
            try:
                # hard_stop fails in-flight requests instead of finishing them: closing shouldn't wait.
                self._mgr.stop(block=True, timeout=30, **_supported_kwargs(self._mgr.stop, hard_stop=True))
            except Exception:  # closing goes on whatever the manager does
                logger.exception("stopping the continuous batching manager failed")
            if self._thread.is_alive() and self._thread is not threading.current_thread():
                self._thread.join(timeout=5)
            self._mgr = None
        self._handles.fail_all("engine closed")

    # ------------------------------------------------------------------ the manager

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
            gen_config = GenerationConfig(  # type: ignore[no-untyped-call]
                do_sample=True,
                temperature=_CB_DEFAULT_TEMPERATURE,
                top_k=1,
                top_p=_CB_DEFAULT_TOP_P,
                max_new_tokens=512,
                eos_token_id=eos,
            )
        else:
            gen_config = GenerationConfig(  # type: ignore[no-untyped-call]
                do_sample=False, max_new_tokens=512, eos_token_id=eos
            )
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
        except Exception:  # a new manager is started either way
            logger.exception("stopping the dead manager failed")
        with self._handles.lock:
            pending = list(self._handles.by_id.values())
            self._handles.by_id.clear()
            try:
                self._mgr = self._new_manager()
            except Exception:  # the dispatcher then stops, failing what is pending
                logger.exception("could not restart continuous batching")
                return False
        for handle in pending:
            handle._finish("error", f"generation failed: {fatal}")
        return True

    def _add_request(self, handle: RequestHandle, prompt_ids: list[int]) -> None:
        params = handle.params
        extra: dict[str, Any] = {}
        if self.sampling_in_batches:
            if params.temperature > 0:
                # top_k = vocabulary size turns top-k off for this request.
                extra = {
                    "temperature": float(params.temperature),
                    "top_k": vocab_size(self.model),
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

    # ------------------------------------------------------------------ the dispatcher thread

    def _dispatch_loop(self) -> None:
        """Route every manager output to its handle; the one consumer of the shared output queue."""
        last_sweep = time.monotonic()
        try:
            while not self._closed:
                # `close` clears the manager, possibly while this loop still waits on it (its join
                # gives up after 5 s): read it once per pass and stop when it is gone.
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
        except Exception:  # pending requests are failed below
            logger.exception("engine dispatcher crashed")
        finally:
            self._handles.fail_all("generation thread stopped")

    def _route(self, output: Any) -> None:
        handle = self._handles.get(output.request_id)
        if handle is None:
            return
        finished = bool(output.is_finished())
        if getattr(output, "error", None):
            handle._finish("error", str(output.error))
        else:
            handle._on_tokens(list(output.generated_tokens), final=finished)
        if finished or (handle.finished and not handle.cancel_requested):
            self._handles.forget(handle)

    def _sweep_cancelled(self) -> None:
        """Drop cancelled handles once no late output can still arrive for them."""
        now = time.monotonic()
        with self._handles.lock:
            by_id = self._handles.by_id
            stale = [
                h.id for h in by_id.values() if h.cancelled_at is not None and now - h.cancelled_at > _CANCELLED_KEEP_S
            ]
            for rid in stale:
                by_id.pop(rid, None)


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
