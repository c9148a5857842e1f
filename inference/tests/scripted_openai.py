"""A scripted OpenAI-compatible server on a real socket, standing in for vLLM or a cloud API.

It is a test double of an outside system, not of our own code: it lets a test make the remote
fail, stall, drop the connection or stream slowly on cue, which a real server cannot be made to
do. Tests against a real server use a second running instance of the project
(tests/test_remote_backend.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Script:
    model: str = "scripted-model"
    chunks: list[str] = field(default_factory=lambda: ["Hello", ", ", "world", "!"])
    finish_reason: str = "stop"
    usage: dict[str, int] | None = field(default_factory=lambda: {"prompt_tokens": 7, "completion_tokens": 4,
                                                                  "total_tokens": 11})
    # The first `fail_first` chat requests get this status instead of a stream.
    fail_first: int = 0
    fail_status: int = 503
    first_delay_s: float = 0.0  # before the first chunk (prefill, queueing)
    chunk_delay_s: float = 0.0
    stall_after: int | None = None  # send this many chunks, then nothing (the connection stays open)
    drop_after: int | None = None  # send this many chunks, then close without finishing
    models_status: int = 200
    # What the server saw.
    chat_requests: list[dict[str, Any]] = field(default_factory=list)
    models_requests: int = 0
    client_went_away: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # the body ends when the connection closes, as a plain stream

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        script = self.server.script
        if not self.path.endswith("/models"):
            self._json(404, {"error": {"message": "not found"}})
            return
        script.models_requests += 1
        self._json(script.models_status, {"object": "list", "data": [{"id": script.model, "object": "model"}]})

    def do_POST(self) -> None:
        script = self.server.script
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        script.chat_requests.append(body)
        if len(script.chat_requests) <= script.fail_first:
            self._json(script.fail_status, {"error": {"message": "overloaded, try again"}})
            return
        if body.get("model") != script.model:
            self._json(404, {"error": {"message": f"The model {body.get('model')} does not exist."}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            self._stream(script)
        except (BrokenPipeError, ConnectionResetError):
            script.client_went_away.set()

    def _stream(self, script: Script) -> None:
        self._sleep(script.first_delay_s)
        self._event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        for n, text in enumerate(script.chunks):
            if script.stall_after is not None and n >= script.stall_after:
                # Wait for the client to give up: its disconnect is what the test looks for.
                while not self.server.stopping.is_set():
                    self._sleep(0.05)
                    self.wfile.write(b": \n")  # a comment only, never a token; it finds a closed socket
                    self.wfile.flush()
                return
            if script.drop_after is not None and n >= script.drop_after:
                return
            if n:
                self._sleep(script.chunk_delay_s)
            self._event({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})
        self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": script.finish_reason}]})
        if script.usage is not None:
            self._event({"choices": [], "usage": script.usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _event(self, payload: dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        self.wfile.flush()

    def _sleep(self, seconds: float) -> None:
        self.server.stopping.wait(seconds)

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, script: Script) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script
        self.stopping = threading.Event()


@contextmanager
def scripted_server(script: Script | None = None) -> Iterator[tuple[str, Script]]:
    """Serves `script` on a free port; yields (base_url ending in /v1, script)."""
    script = script or Script()
    server = _Server(script)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", script
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        time.sleep(0.05)  # let handler threads see `stopping` and end


def closed_port_url() -> str:
    """A base URL on which nothing listens: bind a port, note it, close it."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
