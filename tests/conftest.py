"""The whole product for cross-app tests: daphne in a child process, the `gpu` Celery worker in
this process (threads, as in production), Debian's Chromium driven by Playwright."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
# Flags for a closed network, as root, without a display.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


@pytest.fixture(scope="session")
def asgi_server(django_db_setup: None) -> Iterator[str]:
    """daphne in its own process, as `./dsw run` starts it, on the test database.

    A real subprocess rather than a fork: a forked child inherits asgiref's executor without
    its thread, and every database_sync_to_async call in a consumer would then hang.
    """
    from django.conf import settings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "DB_NAME": str(settings.DATABASES["default"]["NAME"]), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "deepseek_web.web_server", "-b", "127.0.0.1", "-p", str(port), "deepseek_web.asgi:application"],
        cwd=ROOT, env=env,
    )
    url = f"http://localhost:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("daphne did not start") from None
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="session")
def gpu_worker(asgi_server: str) -> Iterator[Any]:
    """The `gpu` queue's worker with the bundled SmolLM2, started after daphne has forked. It also
    takes the `ingest` queue here, so documents uploaded in a browser test get parsed and chunked."""
    from celery.contrib.testing.worker import start_worker

    from deepseek_web.celery import app
    from deepseek_web.redis_client import sync_client
    from inference import runtime

    # Earlier tests queued turns that no worker ran; their rows are gone, so drop them.
    sync_client().flushdb()
    runtime.warm_up()
    with start_worker(
        app, pool="threads", concurrency=4, queues=["gpu", "ingest"], perform_ping_check=False, loglevel="WARNING",
        shutdown_timeout=30,
    ) as worker:
        yield worker
    runtime.shutdown()


# The stand-in engine's answer (`t1 t2 ... t20`, in a second) and the threads of the worker that
# routes to it: more than the concurrent turns of tests/test_capacity.py.
STANDIN_TOKENS = 20
STREAM_WORKER_THREADS = 110


@pytest.fixture(scope="session")
def standin() -> Iterator[str]:
    """The shipped stand-in engine, as a load test runs it: its own process, a real socket."""
    from .web_process import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "inference.standin", "--port", str(port),
                                "--tokens", str(STANDIN_TOKENS), "--tokens-per-s", "20"], cwd=ROOT)
    deadline = time.monotonic() + 30
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the stand-in did not start")
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/v1"
    process.terminate()
    process.wait(timeout=10)


# Every connection of the capacity stack's processes carries this name (libpq's PGAPPNAME), so a
# test counts theirs alone, not the session's other servers or this process's own.
CAPACITY_APP_NAME = "dsw-capacity"


@pytest.fixture
def capacity_stack(standin: str, settings: Any, django_db_setup: None) -> Iterator[str]:
    """Our web server and a `gpu` worker with more threads than the turns, each in its own process
    as `./dsw run` starts them, routing every turn to the stand-in; yields the server's URL.

    Processes, not a worker in this one: Celery's test worker stops through a process-wide flag, so
    a second in-process worker's stop would also stop the session's `gpu_worker`. The per-user and
    per-tenant caps are lifted here (one user drives every stream; the caps have their own tests),
    and this process's settings follow, so a session `gpu_worker` that takes a turn answers alike.
    """
    from .web_process import process_stop, web_server

    backends = [{"name": "standin", "base_url": standin, "model": "standin", "retries": 0}]
    lifted = {"CHAT_MAX_RUNNING_PER_TENANT": 1000, "CHAT_MAX_IN_FLIGHT_PER_USER": 1000,
              "CHAT_MAX_IN_FLIGHT_PER_TENANT": 1000, "CHAT_MAX_STREAMS_PER_USER": 1000}
    settings.INFERENCE_BACKENDS = backends
    for name, value in lifted.items():
        setattr(settings, name, value)
    env = {"INFERENCE_BACKENDS": json.dumps(backends), "PGAPPNAME": CAPACITY_APP_NAME,
           **{name: str(value) for name, value in lifted.items()}}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "deepseek_web", "worker", "-Q", "gpu", "-P", "threads",
         "-c", str(STREAM_WORKER_THREADS), "--without-mingle", "--without-gossip", "-l", "WARNING"],
        cwd=ROOT, env={**os.environ, "DB_NAME": str(settings.DATABASES["default"]["NAME"]), **env},
    )
    try:
        with web_server(env) as (_, url):
            yield url
    finally:
        process_stop(worker, timeout=30)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: the test command installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _log_in(page: Any, base_url: str, username: str, password: str) -> None:
    """Logs in through the login form and waits for the signed-in page."""
    from playwright.sync_api import expect

    page.goto(base_url + "/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    expect(page.locator(".topbar .user")).to_have_text(username)


@pytest.fixture
def log_in() -> Any:
    return _log_in


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


@pytest.fixture
def api_key_for() -> Any:
    """Makes an API key for the OpenAI-compatible API and returns its plaintext.

    `api_key_for(world.tenant_a, world.alice)` acts as Alice in tenant A. With the `asgi_server`
    fixture, point any OpenAI client at f"{asgi_server}/v1" with this key; the test needs
    `pytest.mark.django_db(transaction=True)` so daphne sees the key.
    """
    from audit.services import SYSTEM
    from openai_api.services import api_key_create
    from tenants.rls import tenant_context

    def make(tenant: Any, user: Any, name: str = "test key") -> str:
        with tenant_context(tenant.pk):
            return api_key_create(tenant=tenant, name=name, user=user, created_by=None, actor=SYSTEM).plaintext

    return make


@pytest.fixture(scope="session")
def fault_drill() -> dict[str, Any]:
    """One run of bench/fault_drill.py for the fault tests: `./dsw run` on its own data dir (its own
    PostgreSQL and Redis, so restarting them leaves this session's alone), one kill -9 of the gpu
    worker, one Redis restart and one PostgreSQL restart, each with turns in flight. Its JSON report."""
    import json

    result = subprocess.run(
        [sys.executable, "bench/fault_drill.py", "--kills", "1", "--redis-restarts", "1", "--pg-restarts", "1",
         "--outage-s", "5", "--max-new-tokens", "24", "--turns-per-fault", "2", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    lines = result.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("{"), f"the drill printed no report:\n{result.stdout}\n{result.stderr[-4000:]}"
    report: dict[str, Any] = json.loads(lines[-1])
    report["output"] = result.stdout
    return report


@pytest.fixture
def outsiders(transactional_db: None) -> tuple[Any, Any]:
    """Tenants A and B of the outsider sweep (tests/outsider_sweep.py), built by the product's own
    services, documents ingested by the real pipeline; every text of tenant B is a canary."""
    from .outsider_sweep import run_token, tenantry_build

    token = run_token()
    return tenantry_build(f"aside{token}"), tenantry_build(f"bcanary{token}")
