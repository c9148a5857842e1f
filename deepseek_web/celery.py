from __future__ import annotations

import logging
import os

from celery import Celery
from celery.signals import celeryd_init, worker_init, worker_ready, worker_shutdown
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deepseek_web.settings")

# Set by the gpu worker once its models are loaded; `./dsw run` waits for it before "ready".
GPU_READY_KEY = "dsw:worker:gpu:ready"

logger = logging.getLogger(__name__)

app = Celery("deepseek_web")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("gpu"), Queue("ingest"))
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
        from inference import runtime

        runtime.warm_up()
        from deepseek_web.redis_client import sync_client

        sync_client().set(GPU_READY_KEY, "1")


@worker_shutdown.connect
def _release_models(**_: object) -> None:
    from inference import runtime

    runtime.shutdown()
