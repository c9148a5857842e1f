"""Memory a large unauthenticated multipart POST costs the web server: plain daphne against ours.

    .venv/bin/python bench/request_body_memory.py --mb 200

Starts plain `daphne` and `deepseek_web.web_server` (default limits) in turn, sends each a
multipart/form-data body of --mb MB to /login/ (Content-Length known, sent in full unless the server
closes first), and reports each one's peak-memory growth (VmHWM) and ours as a ratio of plain
daphne's.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import stack

BOUNDARY = b"----bench-boundary"


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError("the server did not start")


def post_multipart(port: int, megabytes: int) -> int:
    """Sends the whole body unless the server stops it; returns the HTTP status (0: none)."""
    head = b'--' + BOUNDARY + b'\r\nContent-Disposition: form-data; name="username"\r\n\r\n'
    tail = b"\r\n--" + BOUNDARY + b"--\r\n"
    size = megabytes * 1024 * 1024
    with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:
        sock.sendall(b"POST /login/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary="
                     + BOUNDARY + b"\r\nContent-Length: %d\r\n\r\n" % (len(head) + size + len(tail)) + head)
        piece = b"a" * (1 << 20)
        try:
            for _ in range(megabytes):
                sock.sendall(piece)
            sock.sendall(tail)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = sock.recv(64)
        except ConnectionResetError:
            return 0
    return int(answer.split()[1]) if answer.startswith(b"HTTP/") else 0


def measure(module: str, megabytes: int) -> tuple[int, int]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", module, "-b", "127.0.0.1", "-p", str(port),
                                "deepseek_web.asgi:application"], cwd=stack.ROOT, env=env,
                               stdout=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        time.sleep(1)  # settled after the first connections
        before = peak_rss(process.pid)
        status = post_multipart(port, megabytes)
        time.sleep(1)
        return peak_rss(process.pid) - before, status
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    args = parser.parse_args()
    stack.prepare_stack()
    plain, plain_status = measure("daphne", args.mb)
    ours, ours_status = measure("deepseek_web.web_server", args.mb)
    mib = 1024 * 1024
    print(f"{args.mb} MB multipart POST to /login/, peak-memory growth of the web server:")
    print(f"  plain daphne:              {plain / mib:8.1f} MiB (HTTP {plain_status})")
    print(f"  deepseek_web.web_server:   {ours / mib:8.1f} MiB (HTTP {ours_status})")
    print(f"  ratio ours / plain daphne: {ours / max(plain, 1):.4f}")


if __name__ == "__main__":
    main()
