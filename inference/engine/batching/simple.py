"""The "simple" batching mode: a worker thread runs plain `model.generate` for one request at a time.

The fallback when neither static nor continuous batching can serve the model: slow, but any
model transformers can generate with works.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from ..request import RequestHandle
from .base import HandleTable

T = TypeVar("T")

logger = logging.getLogger(__name__)


class SimpleBatcher:
    """Serves queued requests one at a time on its own thread."""

    name: Literal["simple"] = "simple"

    def __init__(self, model: Any, tokenizer: Any, eos_ids: set[int]) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self._handles = HandleTable()
        # (handle, prompt ids) jobs; None tells the worker to exit.
        self._jobs: queue.Queue[tuple[RequestHandle, list[int]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="engine-simple", daemon=True)

    @classmethod
    def start(cls, model: Any, tokenizer: Any, eos_ids: set[int]) -> SimpleBatcher:
        """A batcher whose worker thread already waits for requests."""
        batcher = cls(model, tokenizer, eos_ids)
        batcher._thread.start()
        return batcher

    def submit(self, handle: RequestHandle, prompt_ids: list[int]) -> None:
        with self._handles.lock:
            self._handles.by_id[handle.id] = handle
            self._jobs.put((handle, prompt_ids))

    def cancel(self, handle: RequestHandle) -> None:
        """Nothing to do: the running generate polls handle.cancel_requested / finished between steps."""

    def alive(self) -> bool:
        return self._thread.is_alive()

    def call(self, fn: Callable[[], T]) -> T:
        return fn()

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self._jobs.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._handles.fail_all("engine closed")

    def _loop(self) -> None:
        """Serve queued requests one at a time with `model.generate`."""
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    break
                handle, prompt_ids = job
                if handle.finished:  # cancelled while queued
                    self._handles.forget(handle)
                    continue
                try:
                    self._run(handle, prompt_ids)
                except Exception as exc:  # one failed request must not end the worker
                    logger.exception("generation failed for %s", handle.id)
                    handle._finish("error", f"{type(exc).__name__}: {exc}")
                finally:
                    self._handles.forget(handle)
        finally:
            self._handles.fail_all("generation thread stopped")

    def _run(self, handle: RequestHandle, prompt_ids: list[int]) -> None:
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


def _pad_id(tokenizer: Any, eos_ids: set[int]) -> int | None:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    return min(eos_ids) if eos_ids else None
