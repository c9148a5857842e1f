"""A fast stand-in engine for load tests: an OpenAI-compatible server that streams at a set rate.

`python -m inference.standin --port 8100 --tokens-per-s 5 --tokens 60` serves
`GET /v1/models` and `POST /v1/chat/completions` (server-sent events when `"stream": true`),
answering every request with `--tokens` chunks paced at `--tokens-per-s`, whatever the prompt.
The product routes to it as any remote backend (`INFERENCE_BACKENDS`, `inference/engine/remote.py`),
so a load test measures the product's own cost (daphne, the worker, Redis, PostgreSQL) and not a
model's. Each chunk's text is `t<n> `, so a client can check that none was dropped or reordered.

Hand-written on asyncio streams rather than a web framework: it needs two fixed routes, must hold
thousands of slow streams on one core, and must carry no dependency the engine image lacks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from dataclasses import dataclass

MODEL = "standin"
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Pace:
    tokens: int = 60
    tokens_per_s: float = 5.0


def chunk_text(n: int) -> str:
    """The n-th chunk's text (1-based): numbered, so drops and reordering are visible downstream."""
    return f"t{n} "


def _event(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _chunk(index: int, delta: dict[str, str], finish: str | None = None) -> dict[str, object]:
    return {"id": "standin", "object": "chat.completion.chunk", "created": int(time.time()), "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


async def _respond(writer: asyncio.StreamWriter, status: str, body: bytes, content_type: str) -> None:
    writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                 "Connection: keep-alive\r\n\r\n".encode() + body)
    await writer.drain()


async def _stream(writer: asyncio.StreamWriter, pace: Pace, tokens: int, include_usage: bool) -> None:
    # No Content-Length: the body ends when the connection closes (HTTP/1.1 allows it, httpx reads it).
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                 b"Connection: close\r\n\r\n")
    writer.write(_event(_chunk(0, {"role": "assistant", "content": ""})))
    await writer.drain()
    interval = 1.0 / pace.tokens_per_s if pace.tokens_per_s > 0 else 0.0
    # Paced against the start, not the previous chunk: a late wake-up does not push every later one.
    start = time.monotonic()
    for n in range(1, tokens + 1):
        delay = start + n * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        writer.write(_event(_chunk(0, {"content": chunk_text(n)})))
        await writer.drain()
    writer.write(_event(_chunk(0, {}, "length" if tokens >= pace.tokens else "stop")))
    if include_usage:
        writer.write(_event({"id": "standin", "object": "chat.completion.chunk", "model": MODEL, "choices": [],
                             "usage": {"prompt_tokens": 1, "completion_tokens": tokens,
                                       "total_tokens": tokens + 1}}))
    writer.write(b"data: [DONE]\n\n")
    await writer.drain()


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pace: Pace) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_HEADER_BYTES:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path = (lines[0].split(" ") + ["", ""])[:2]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
            if method == "GET" and path.rstrip("/").endswith("/models"):
                await _respond(writer, "200 OK", json.dumps({"object": "list", "data": [
                    {"id": MODEL, "object": "model", "owned_by": "standin"}]}).encode(), "application/json")
                continue
            if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
                await _respond(writer, "404 Not Found", b'{"error":{"message":"not found"}}', "application/json")
                continue
            try:
                request = json.loads(body or b"{}")
                tokens = min(pace.tokens, int(request.get("max_tokens") or pace.tokens))
            except (ValueError, TypeError, AttributeError):
                await _respond(writer, "400 Bad Request", b'{"error":{"message":"bad JSON"}}', "application/json")
                continue
            if request.get("stream"):
                usage = bool((request.get("stream_options") or {}).get("include_usage"))
                await _stream(writer, pace, tokens, usage)
                return
            text = "".join(chunk_text(n) for n in range(1, tokens + 1))
            await _respond(writer, "200 OK", json.dumps({
                "id": "standin", "object": "chat.completion", "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "length"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1}}).encode(),
                "application/json")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass  # the client went away; nothing to tell it
    finally:
        writer.close()


async def serve(host: str, port: int, pace: Pace, ready: asyncio.Event | None = None) -> None:
    server = await asyncio.start_server(lambda r, w: _handle(r, w, pace), host, port, backlog=4096,
                                        limit=MAX_HEADER_BYTES)
    async with server:
        if ready is not None:
            ready.set()
        print(f"standin serving http://{host}:{port}/v1 ({pace.tokens} tokens at {pace.tokens_per_s}/s)",
              flush=True)
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m inference.standin", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--tokens", type=int, default=60, help="chunks per answer")
    parser.add_argument("--tokens-per-s", type=float, default=5.0, help="pace of each answer; 0: no pause")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, Pace(tokens=args.tokens, tokens_per_s=args.tokens_per_s)))


if __name__ == "__main__":
    main()
