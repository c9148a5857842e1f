"""Starts our daphne (deepseek_web.web_server) in a child process on the test database, with extra
settings in its environment, for tests that need a server of their own (body limits, proxies)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextmanager
def web_server(env: dict[str, str], host: str = "127.0.0.1") -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Yields the process and its base URL once /healthz answers."""
    from django.conf import settings

    port = free_port(host)
    full_env = {**os.environ, "DB_NAME": str(settings.DATABASES["default"]["NAME"]), "PYTHONUNBUFFERED": "1", **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "deepseek_web.web_server", "-b", host, "-p", str(port), "deepseek_web.asgi:application"],
        cwd=ROOT, env=full_env,
    )
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the web server did not start") from None
                time.sleep(0.2)
        yield process, url
    finally:
        process_stop(process, timeout=20)


def process_stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
