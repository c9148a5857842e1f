"""Real client addresses behind the proxy (issue 12, finding 8).

Before, django-axes saw only the proxy's address behind nginx, so 5 wrong passwords from anyone
locked the real user out everywhere. Here a real nginx (Debian's, from scripts/nginx.conf.template)
stands in front of our daphne. Everything is on loopback, told apart by source address: clients
connect to nginx from 127.0.0.3 and 127.0.0.4, nginx connects to daphne from 127.0.0.2 (the only
TRUSTED_PROXIES entry), and a direct client connects from 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from axes.models import AccessAttempt

from conftest import PASSWORD
from tests.web_process import free_port, web_server

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
NGINX = "/usr/sbin/nginx"
PROXY, CLIENT_X, CLIENT_Y, DIRECT = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.1"


@pytest.fixture(scope="module")
def daphne(django_db_setup: None) -> Iterator[str]:
    with web_server({"TRUSTED_PROXIES": PROXY}) as (_, url):
        yield url


@pytest.fixture(scope="module")
def nginx(daphne: str) -> Iterator[str]:
    if not os.path.exists(NGINX):
        pytest.fail(f"{NGINX} is missing: the test command installs Debian's nginx")
    run_dir = Path(tempfile.mkdtemp(prefix="dsw-nginx-"))
    run_dir.chmod(0o755)  # nginx's workers may run as another user
    port = free_port()
    config = (ROOT / "scripts" / "nginx.conf.template").read_text()
    for name, value in {"RUN_DIR": str(run_dir), "LISTEN": f"127.0.0.1:{port}",
                        "UPSTREAM": daphne.removeprefix("http://"), "PROXY_SOURCE": PROXY,
                        "MAX_BODY": "64m"}.items():
        config = config.replace("{{" + name + "}}", value)
    (run_dir / "nginx.conf").write_text(config)
    globals_ = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    process = subprocess.Popen([NGINX, "-p", str(run_dir), "-c", str(run_dir / "nginx.conf"), "-g", globals_])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("nginx did not start: " + (run_dir / "error.log").read_text(errors="replace"))
        time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=20)
    shutil.rmtree(run_dir, ignore_errors=True)


def client_from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


def log_in(client: httpx.Client, url: str, username: str, password: str, forwarded_for: str = "") -> int:
    """Posts the login form (with its CSRF token); returns the status: 302 in, 200 wrong, 429 locked."""
    page = client.get(url + "/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, page.text[:500]
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    response = client.post(url + "/login/", data={"csrfmiddlewaretoken": token.group(1), "username": username,
                                                  "password": password}, headers=headers)
    return response.status_code


def test_it_locks_out_each_client_behind_nginx_on_its_own(world: Any, nginx: str) -> None:
    with client_from(CLIENT_X) as attacker:
        # The attacker's X-Forwarded-For is replaced by nginx with its real address.
        statuses = [log_in(attacker, nginx, "alice", "wrong", forwarded_for="203.0.113.7") for _ in range(5)]
        assert statuses[-1] == 429
        assert log_in(attacker, nginx, "alice", PASSWORD) == 429  # locked out, even with the password
    assert set(AccessAttempt.objects.filter(username="alice").values_list("ip_address", flat=True)) == {CLIENT_X}
    with client_from(CLIENT_Y) as alice:
        assert log_in(alice, nginx, "alice", PASSWORD) == 302  # the real user, elsewhere, gets in


def test_it_ignores_x_forwarded_for_from_a_client_that_is_not_a_trusted_proxy(world: Any, daphne: str) -> None:
    with client_from(DIRECT) as attacker:
        # A new forged address on every try would dodge the lockout if the header were believed.
        statuses = [log_in(attacker, daphne, "bob", "wrong", forwarded_for=f"198.51.100.{i}") for i in range(6)]
    assert statuses[-1] == 429
    assert set(AccessAttempt.objects.filter(username="bob").values_list("ip_address", flat=True)) == {DIRECT}
