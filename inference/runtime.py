"""One engine and one embedder per GPU worker process, loaded once at start and shared by its threads."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from django.conf import settings

if TYPE_CHECKING:
    from inference.engine import CrossEncoderScorer, Embedder, Engine, SamplingParams

logger = logging.getLogger(__name__)
T = TypeVar("T")

_lock = threading.Lock()
_engine: Engine | None = None
_embedder: Embedder | None = None
_reranker: CrossEncoderScorer | None = None


def model_path() -> Path:
    from inference.engine import resolve_model_path

    return resolve_model_path(settings.MODEL_PATH or None, Path(settings.MODELS_DIR))


def apply_cuda_alloc_conf() -> None:
    """Export MODEL_CUDA_ALLOC_CONF as PYTORCH_CUDA_ALLOC_CONF unless the environment already sets one.

    torch's CUDA allocator reads the variable once, when it starts, so this must run before torch
    is imported: the gpu worker calls it from celeryd_init (deepseek_web/celery.py), before Django
    and the task modules load. torch 2.9+ prefers the new name PYTORCH_ALLOC_CONF, so an operator's
    value under either name wins over the setting.
    """
    value = settings.MODEL_CUDA_ALLOC_CONF
    if not value or "PYTORCH_CUDA_ALLOC_CONF" in os.environ or "PYTORCH_ALLOC_CONF" in os.environ:
        return
    if "torch" in sys.modules:
        logger.warning("torch was imported before PYTORCH_CUDA_ALLOC_CONF was set; it may not apply")
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = value


def get_engine() -> Engine:
    """The worker's engine. A failed load is retried on the next turn, so fixing MODEL_PATH heals it."""
    global _engine
    with _lock:
        if _engine is None:
            from inference.engine import Engine

            _engine = _on_fresh_thread(lambda: Engine.load(
                model_path(),
                device=settings.MODEL_DEVICE,
                dtype=settings.MODEL_DTYPE or None,
                quantization=settings.MODEL_QUANTIZATION,
                batching=settings.MODEL_BATCHING,  # type: ignore[arg-type]  # validated by Engine
                max_batch=settings.MODEL_MAX_BATCH,
                max_context=settings.MODEL_MAX_CONTEXT or None,
                cache_bytes=(settings.MODEL_KV_CACHE_MB << 20) or None,
            ))
        return _engine


def get_embedder() -> Embedder:
    global _embedder
    with _lock:
        if _embedder is None:
            from inference.engine import Embedder

            _embedder = _on_fresh_thread(
                lambda: Embedder.load(settings.EMBEDDING_MODEL_PATH or None, device=settings.MODEL_DEVICE))
            _embedder.runner = torch_call
        return _embedder


def get_reranker() -> CrossEncoderScorer:
    global _reranker
    with _lock:
        if _reranker is None:
            from inference.engine import CrossEncoderScorer

            _reranker = _on_fresh_thread(
                lambda: CrossEncoderScorer.load(settings.KNOWLEDGE_RERANKER_PATH, device=settings.MODEL_DEVICE))
            _reranker.runner = torch_call
        return _reranker


def torch_call(fn: Callable[[], T]) -> T:
    """Run torch work on the chat engine's thread once the engine runs (Engine.call says why)."""
    engine = _engine
    return engine.call(fn) if engine is not None else fn()


def _on_fresh_thread(fn: Callable[[], T]) -> T:
    """Run a model load on a short-lived thread. Loading runs torch ops, which give the calling
    thread an OpenMP team for as long as it lives; the worker's main thread lives for ever, and a
    second team beside the engine's slows every CPU step (see StaticBatcher.call)."""
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)

    thread = threading.Thread(target=run, name="model-load")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def shutdown_reranker() -> None:
    """Drops the loaded cross-encoder, so the next turn loads KNOWLEDGE_RERANKER_PATH again."""
    global _reranker
    with _lock:
        _reranker = None


def warm_up() -> None:
    """Loads both models at worker start. A failure is logged, not fatal: turns then fail with the reason."""
    apply_cuda_alloc_conf()  # a no-op in the gpu worker, which did it at start; covers other callers
    from transformers.utils import logging as transformers_logging

    # Weight-loading progress bars only clutter a worker's log.
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # transformers leaves it untyped
    for name, loader in (("chat model", get_engine), ("embedding model", get_embedder)):
        try:
            loader()
            logger.info("%s loaded", name)
        except Exception as exc:  # noqa: BLE001 - the worker must stay up to report the error per turn
            logger.error("could not load the %s: %s", name, describe_error(exc))


def shutdown() -> None:
    global _engine
    with _lock:
        if _engine is not None:
            _engine.close()
            _engine = None


def sampling_params() -> SamplingParams:
    from inference.engine import SamplingParams

    return SamplingParams(max_new_tokens=settings.CHAT_MAX_NEW_TOKENS)


def backend_name() -> str:
    return f"local:{Path(settings.MODEL_PATH).name if settings.MODEL_PATH else 'smollm2-135m-instruct'}"


def describe_error(exc: BaseException) -> str:
    from inference.engine import ModelNotFoundError

    if isinstance(exc, ModelNotFoundError):
        return f"The chat model is not available: {exc}"
    return f"The chat model could not run: {type(exc).__name__}: {exc}"
