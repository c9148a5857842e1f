"""The Celery app: queues `gpu` (turns, embeddings), `ingest` (parsing) and `maintenance` (sweeps),
and the gpu worker's start-up: pool check, CUDA allocator settings, heartbeat, models."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from celery import Celery
from celery.signals import celeryd_init, worker_init, worker_ready, worker_shutdown
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deepseek_web.settings")

# Set by the gpu worker once its models are loaded; `./dsw run` waits for it before "ready".
GPU_READY_KEY = "dsw:worker:gpu:ready"

logger = logging.getLogger(__name__)

app = Celery("deepseek_web")
app.config_from_object("django.conf:settings", namespace="CELERY")
# `maintenance` has its own solo worker, so the stale-turn sweep runs even when no gpu worker does.
app.conf.task_queues = (Queue("gpu"), Queue("ingest"), Queue("maintenance"))
# Pools that keep the engine in the process the worker started (it holds threads and a CUDA
# context that a forked pool child does not get: prefork left every turn "engine is not running").
GPU_POOLS = ("threads", "solo")
app.autodiscover_tasks()


def _consumes_gpu(queues: object) -> bool:
    """Whether a worker's -Q option (a list, or a comma-separated string) names the gpu queue."""
    if isinstance(queues, str):
        names = queues.split(",")
    elif isinstance(queues, (list, tuple, set, frozenset)):
        names = [str(name) for name in queues]
    else:
        return False
    return "gpu" in {name.strip() for name in names}


@celeryd_init.connect
def _configure_gpu_worker(sender: object, options: dict[str, object] | None = None, **_: object) -> None:
    # celeryd_init fires before Django setup and task imports, so before anything imports torch,
    # whose CUDA allocator reads PYTORCH_CUDA_ALLOC_CONF only once, when it starts.
    if _consumes_gpu((options or {}).get("queues")):
        from celery.concurrency import get_implementation

        # -P arrives as a name or, through Celery's CLI, as the pool class itself.
        chosen: Any = (options or {}).get("pool") or (options or {}).get("pool_cls") or app.conf.worker_pool
        pool = get_implementation(chosen)
        pool_name = {"thread": "threads"}.get(pool.__module__.rsplit(".", 1)[-1], pool.__module__.rsplit(".", 1)[-1])
        if pool_name not in GPU_POOLS:
            sys.stderr.write(f"The gpu queue's worker must run with -P threads or -P solo, not {pool_name!r}: "
                             "the engine lives in the worker's own process.\n")
            sys.exit(2)
        from inference.runtime import apply_cuda_alloc_conf

        apply_cuda_alloc_conf()


@worker_init.connect
def _check_database_capacity(sender: object, **_: object) -> None:
    # A worker started on its own (production) is checked too: its threads against the server's
    # connection slots. It only warns: the other processes sharing the server are unknown here.
    concurrency = getattr(sender, "concurrency", None)
    if isinstance(concurrency, int):
        from deepseek_web.cli import worker_capacity_warning

        warning = worker_capacity_warning(concurrency)
        if warning:
            logger.warning(warning)


@worker_ready.connect
def _load_models_on_gpu_worker(sender: object, **_: object) -> None:
    # Only the worker that consumes `gpu` holds models; the ingest worker and beat stay light.
    consumed = set(app.amqp.queues.consume_from or {})
    if "gpu" in consumed:
        from chat import liveness
        from inference import runtime

        # Alive (and so the owner of what it takes) from now, while the models load.
        liveness.heartbeat_start(liveness.worker_identity(str(getattr(sender, "hostname", "") or "")))

        runtime.warm_up()
        from deepseek_web.redis_client import sync_client

        sync_client().set(GPU_READY_KEY, "1")


@worker_shutdown.connect
def _release_models(**_: object) -> None:
    from inference import runtime

    runtime.shutdown()
