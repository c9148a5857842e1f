"""One shared generation engine per worker: many threads submit, one batcher runs, all stream.

`Engine` owns the model, the tokenizer and the one batching mode that runs its requests, and turns
prompts into `RequestHandle`s. The modes (`batching/`), tried in this order by "auto":
- "static" (`batching/static/`): our static-slot continuous batching with CUDA-graphed decode
  steps, for Llama-family models. The fastest by far on the GPU (bench/gpu_generation.py).
- "continuous" (`batching/continuous.py`): transformers' `ContinuousBatchingManager` runs every
  request in shared forward passes. Any model type with paged attention support.
- "simple" (`batching/simple.py`): a worker thread runs plain `model.generate` for one request at
  a time.
All of them feed the same detokenization and stop-string logic (`request.py`), so callers never
see the difference.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from .batching.base import Batcher, BatchingName, vocab_size
from .batching.continuous import ContinuousBatcher
from .batching.simple import SimpleBatcher
from .batching.static.scheduler import StaticBatcher
from .request import EngineError, RequestHandle, SamplingParams

T = TypeVar("T")

logger = logging.getLogger(__name__)

Batching = Literal["auto", "static", "continuous", "simple"]


class Engine:
    """A model plus one batcher, shared by all threads of a worker."""

    _batcher: Batcher

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

        `max_batch` caps concurrent requests. For static batching, `max_context` is each slot's
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
        self.eos_ids = _eos_ids(model, tokenizer)
        self._ids = itertools.count()
        self._closed = False
        self._start(batching)

    def _start(self, batching: Batching) -> None:
        """Start the first mode that works, in the order static, continuous, simple.

        A mode named outright must start or the engine fails; "auto" moves on to the next, and
        prefers a working slow path to a crash: some model types or transformers builds support
        neither our slot cache nor paged attention.
        """
        if batching in ("auto", "static"):
            try:
                self._prove(StaticBatcher.start(
                    self.model, self.eos_ids, max_batch=self.max_batch, max_context=self.max_context,
                    cache_bytes=self.cache_bytes, compile=self.compile,
                ))
                return
            except Exception as exc:
                if batching == "static":
                    raise EngineError(f"static batching unavailable: {exc}") from exc
                logger.info("Static batching unavailable (%s); trying transformers' continuous batching", exc)
        if batching in ("auto", "continuous"):
            try:
                self._prove(ContinuousBatcher.start(
                    self.model, self.eos_ids, max_batch=self.max_batch, cb_options=self.cb_options
                ))
                return
            except Exception as exc:
                if batching == "continuous":
                    raise EngineError(f"continuous batching unavailable: {exc}") from exc
                logger.warning("Continuous batching unavailable (%s); using the simple path", exc)
        self._batcher = SimpleBatcher.start(self.model, self.tokenizer, self.eos_ids)

    def _prove(self, batcher: Batcher) -> None:
        """Serve with `batcher` once one tiny request went through it; close it if that fails.

        Warm up through the real path: a model whose attention breaks in this mode fails here, at
        startup, instead of on a user's first turn.
        """
        self._batcher = batcher  # submit() runs the probe through it
        probe = self.submit([int(next(iter(self.eos_ids), 0))], SamplingParams(max_new_tokens=2))
        if not probe.wait(timeout=120) or probe.finish_reason == "error":
            batcher.close()
            raise EngineError(f"warmup request failed: {probe.error or 'timeout'}")

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

    @property
    def batching(self) -> BatchingName:
        """The batching mode actually running: "static", "continuous" or "simple"."""
        return self._batcher.name

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
        vocab = vocab_size(self.model)
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
        try:
            self._batcher.submit(handle, prompt_ids)
        except Exception as exc:  # noqa: BLE001 - the caller gets it as the handle's error
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
        self._batcher.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, fn: Callable[[], T]) -> T:
        """Run other torch work (embeddings, reranking) on the engine's own thread when it has
        one (static batching; see StaticBatcher.call for why), else right here."""
        return self._batcher.call(fn)

    def stats(self) -> dict[str, int]:
        """Slot use of static batching (empty for the others): tests and health pages read it."""
        return self._batcher.stats()

    # ------------------------------------------------------------------ for RequestHandle

    def _decode(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True))

    def _alive(self) -> bool:
        """Whether the batcher's background thread runs."""
        return self._batcher.alive()

    def _drop_from_batch(self, handle: RequestHandle) -> None:
        """Stop computing tokens for a request and free what it holds in the batch (user cancel,
        stop string, early EOS)."""
        self._batcher.cancel(handle)


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
