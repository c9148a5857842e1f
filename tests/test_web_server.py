"""Request bodies are capped before anything parses them (issue 12, finding 6).

Before, Twisted parsed a multipart body before the app ran: 200 MB to /login/ took daphne from
339 MB to 2,690 MB. Here the real server (deepseek_web.web_server) answers an oversized body
with a 413 before login, and its peak memory (VmHWM from /proc) grows by less than twice the limit.
"""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.web_process import web_server

LIMIT = 1024 * 1024
UPLOAD_LIMIT = 4 * 1024 * 1024
BOUNDARY = b"----edge-boundary"


@pytest.fixture(scope="module")
def server(django_db_setup: None) -> Iterator[tuple[int, str]]:
    env = {"REQUEST_MAX_BODY_BYTES": str(LIMIT), "REQUEST_UPLOAD_MAX_BODY_BYTES": str(UPLOAD_LIMIT)}
    with web_server(env) as (process, url):
        yield process.pid, url


def peak_rss(pid: int) -> int:
    """The process's peak resident memory in bytes (VmHWM), so a short spike is not missed."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            break
        if not piece:
            break
        data += piece
        if b"\r\n\r\n" in data:
            head, _, body = data.partition(b"\r\n\r\n")
            headers = dict(line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:])
            if len(body) >= int(headers.get("content-length", "-1")) >= 0:
                break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def multipart_head(path: str, extra: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY.decode()}\r\n{extra}\r\n").encode()


def part(size: int) -> bytes:
    return (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="username"\r\n\r\n' + b"a" * size
            + b"\r\n--" + BOUNDARY + b"--\r\n")


def send_chunked_until_answered(sock: socket.socket, total: int) -> int:
    """Sends a chunked body of up to `total` bytes, stopping as soon as the server answers."""
    sent = 0
    chunk = b"a" * 65536
    while sent < total:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            break
        try:
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(chunk)
    return sent


def test_it_refuses_an_oversized_multipart_login_at_its_headers(server: Any) -> None:
    pid, url = server
    before = peak_rss(pid)
    with connect(url) as sock:
        sock.sendall(multipart_head("/login/", f"Content-Length: {200 * 1024 * 1024}\r\n"))
        # Headers only: the answer comes before a byte of the body is sent.
        status, headers, body = read_response(sock)
    assert status == 413
    assert b"larger than" in body
    assert peak_rss(pid) - before < 2 * LIMIT


def test_it_cuts_a_chunked_body_at_the_limit_and_keeps_memory_under_twice_it(server: Any) -> None:
    pid, url = server
    before = peak_rss(pid)
    with connect(url) as sock:
        sock.sendall(multipart_head("/login/", "Transfer-Encoding: chunked\r\n"))
        sent = send_chunked_until_answered(sock, 64 * LIMIT)
        status, _, _ = read_response(sock)
    assert status == 413
    assert sent < 64 * LIMIT  # the server answered before the client was done
    assert peak_rss(pid) - before < 2 * LIMIT


def test_it_answers_413_in_openai_format_under_v1(server: Any) -> None:
    _, url = server
    with connect(url) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (LIMIT + 1))
        status, headers, body = read_response(sock)
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "request_too_large"


def test_it_passes_bodies_under_the_limit_to_the_app(server: Any) -> None:
    _, url = server
    body = part(LIMIT // 2)
    with connect(url) as sock:
        sock.sendall(multipart_head("/login/", f"Content-Length: {len(body)}\r\n") + body)
        status, _, _ = read_response(sock)
    assert status == 403  # Django's CSRF refusal: the body reached the app


def test_it_passes_a_chunked_body_under_the_limit_to_the_app(server: Any) -> None:
    _, url = server
    body = part(LIMIT // 2)
    with connect(url) as sock:
        sock.sendall(multipart_head("/login/", "Transfer-Encoding: chunked\r\n"))
        sock.sendall(b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        status, _, _ = read_response(sock)
    assert status == 403  # Django's CSRF refusal: the body reached the app


def test_it_gives_upload_paths_their_own_limit(server: Any) -> None:
    _, url = server
    body = part(2 * LIMIT)  # above the default limit, under the upload limit
    with connect(url) as sock:
        sock.sendall(multipart_head("/knowledge/1/upload/", f"Content-Length: {len(body)}\r\n") + body)
        status, _, _ = read_response(sock)
    assert status != 413
    with connect(url) as sock:
        sock.sendall(multipart_head("/knowledge/1/upload/", f"Content-Length: {UPLOAD_LIMIT + 1}\r\n"))
        status, _, _ = read_response(sock)
    assert status == 413
