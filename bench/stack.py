"""What every benchmark here sets up first: the embedded services and its own database.

Import this module before Django: it points the settings at the `dsw_bench` database and Redis
database 2, so a benchmark never touches the data of `./dsw run` or of the tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DB_NAME"] = "dsw_bench"
os.environ.setdefault("DSW_REDIS_DB", "2")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deepseek_web.settings")


def prepare_stack() -> None:
    """Embedded PostgreSQL and Redis, the roles, a migrated `dsw_bench`, and Django set up."""
    from deepseek_web.services.paths import PG_OWNER_ROLE, data_dir
    from deepseek_web.services.postgres import ensure_database, ensure_postgres, ensure_roles
    from deepseek_web.services.redis_server import ensure_redis

    data = data_dir()
    ensure_postgres(data)
    ensure_redis(data)
    ensure_roles(data)
    ensure_database(data, "dsw_bench", owner=PG_OWNER_ROLE)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


def gpu_worker_start(command: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Starts a `gpu` worker once the previous run's "models loaded" mark is gone: a mark left in
    Redis by an earlier run (or phase) would let the measurement start while this worker still
    loads its models, and the load's CPU would land in the figures."""
    from deepseek_web.celery import GPU_READY_KEY
    from deepseek_web.redis_client import sync_client

    sync_client().delete(GPU_READY_KEY)
    return subprocess.Popen(command, **popen)


def gpu_worker_wait_ready(timeout_s: float = 300.0) -> None:
    """Waits until the `gpu` worker has loaded its models."""
    from deepseek_web.celery import GPU_READY_KEY
    from deepseek_web.redis_client import sync_client

    deadline = time.monotonic() + timeout_s
    while not sync_client().exists(GPU_READY_KEY):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gpu worker did not load its models within {timeout_s:.0f} s")
        time.sleep(0.2)


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile (NaN for no values)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index] if ordered else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")
