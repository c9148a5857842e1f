"""Load: many concurrent chat streams, and a storm of WebSocket handshakes (issue 12, finding 16).

What it runs: the real stack on the embedded services, in the bench database (`dsw_bench`) and
Redis database 2: the shipped stand-in engine (`python -m inference.standin`), daphne (`deepseek_web.web_server`), and one
`gpu` Celery worker (threads) that routes every turn to the stand-in as a remote backend.

1. Baseline: `--streams` clients stream from the stand-in directly, all at once; the gaps between
   chunks as they arrive (ideally 1 / tokens-per-s) give the stand-in's own inter-chunk p99.
2. Product: `--streams` WebSocket clients, each on its own conversation, connect (retrying a
   failed handshake with full jitter, as chat.js does), submit together once all are connected, and read
   their turn to its end: turns finished, chunks dropped (each answer is `t1 t2 ... tN`), and the
   inter-chunk p99 through daphne, the worker, Redis and PostgreSQL. The figure is the p99 added
   over the baseline's (target: at most 50 ms).
3. Storm: `--storm` clients open the chat WebSocket at once, as many tabs reconnecting after a
   restart would; each has 5 s for its handshake and retries with full jitter, as chat.js does.

One user drives every stream and every tab, so the fairness caps (chat.dispatch, chat.socket_limits:
turns running per tenant, in flight and sockets per user) are lifted for the run: this measures
what the stack carries, and the caps have their own tests. A refused socket counts as an error.

Run:  .venv/bin/python bench/load_streams.py --streams 500 --tokens-per-s 5 --tokens 60 --storm 1000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import random
import subprocess
import sys
import time
import uuid
from typing import Any

from stack import (
    ROOT,
    free_port,
    gpu_worker_start,
    gpu_worker_wait_ready,
    percentile,
    prepare_stack,
    wait_http,
)

from inference.standin import chunk_text


def lateness(arrivals: list[float], tokens_per_s: float) -> list[float]:
    """How late each chunk came against its stream's own schedule, in seconds.

    The stand-in writes chunk n at (start + n / rate); chunk n of a stream arriving at a(n) was
    delayed by a(n) - n / rate - start, and the stream's least delay stands for its fixed cost
    (request, first hop). Unlike the gap between chunks, this also sees a stream that falls
    behind and then arrives in bursts (gaps near 0 after a long one).
    """
    offsets = [at - n / tokens_per_s for n, at in enumerate(arrivals)]
    least = min(offsets, default=0.0)
    return [offset - least for offset in offsets]


def prepare(conversations: int) -> tuple[str, list[int]]:
    """The bench database, one user without quotas and its conversations: (session key, ids)."""
    prepare_stack()
    from django.contrib.auth import get_user_model
    from django.test import Client

    from chat.models import Conversation
    from deepseek_web.redis_client import sync_client
    from tenants.models import Membership, Tenant
    from tenants.rls import tenant_context

    sync_client().flushdb()
    tenant, _ = Tenant.objects.get_or_create(slug="bench-load", defaults={"name": "Bench load"})
    Tenant.objects.filter(pk=tenant.pk).update(quota_messages_per_user_day=0, quota_tokens_per_month=0)
    user, _ = get_user_model().objects.get_or_create(username="bench-load-user")
    with tenant_context(tenant.pk):
        Membership.objects.get_or_create(tenant=tenant, user=user)
        ids = [c.pk for c in Conversation.objects.bulk_create(
            Conversation(tenant=tenant, user=user, title="load") for _ in range(conversations))]
    client = Client()
    client.force_login(user)
    return str(client.cookies["sessionid"].value), ids


async def direct_streams(base_url: str, streams: int) -> list[list[float]]:
    """Chunk arrival times of `streams` concurrent streams read straight from the stand-in."""
    import httpx

    async def one(client: httpx.AsyncClient) -> list[float]:
        arrivals: list[float] = []
        body = {"model": "standin", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        async with client.stream("POST", f"{base_url}/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"content":"t' in line:
                    arrivals.append(time.monotonic())
        return arrivals

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        return list(await asyncio.gather(*(one(client) for _ in range(streams))))


async def product_streams(base_url: str, session_key: str, ids: list[int]) -> list[Any]:
    """One turn per conversation, all streaming together: every client connects first (retrying
    its handshake as chat.js does), and all submit once the last is connected or has given up.
    Handshakes have their own figure (`storm`); here they would only stagger the streams."""
    from deepseek_web.testing import chat_turn

    settled = 0
    everyone_settled = asyncio.Event()

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled == len(ids):
            everyone_settled.set()

    async def connected() -> None:
        settle()
        await everyone_settled.wait()

    async def one(cid: int) -> Any:
        try:
            return await chat_turn(base_url, cid, session_key, "load", uuid.uuid4().hex, timeout_s=300,
                                   handshake_retries=8, connected=connected)
        except Exception as exc:  # noqa: BLE001 - a lost client is counted, not fatal to the bench
            if not everyone_settled.is_set():
                settle()  # it never connected: the others need not wait for it
            return exc

    return await asyncio.gather(*(one(cid) for cid in ids))


async def storm(base_url: str, session_key: str, ids: list[int], tabs: int, budget_s: float) -> dict[str, Any]:
    """`tabs` handshakes at once; each retries with full jitter (as chat.js) until `budget_s`."""
    from deepseek_web.testing import ws_connect

    first_try = 0
    finished: list[float] = []
    started = time.monotonic()

    async def tab(n: int) -> None:
        nonlocal first_try
        attempt = 0
        while time.monotonic() - started < budget_s:
            try:
                async with ws_connect(base_url, ids[n % len(ids)], session_key, open_timeout=5):
                    finished.append(time.monotonic() - started)
                    first_try += attempt == 0
                    return
            except Exception:  # noqa: BLE001 - a refused or timed-out handshake is retried, as the page does
                await asyncio.sleep(random.random() * min(30.0, 0.5 * 2 ** attempt))
                attempt += 1

    await asyncio.gather(*(tab(n) for n in range(tabs)))
    return {"connected": len(finished), "first_try": first_try,
            "p99_s": percentile(finished, 99), "last_s": max(finished, default=float("nan"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--tokens-per-s", type=float, default=5.0)
    parser.add_argument("--storm", type=int, default=1000)
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the figures

    session_key, ids = prepare(args.streams)
    standin_port, web_port = free_port(), free_port()
    standin_url = f"http://127.0.0.1:{standin_port}/v1"
    caps_lifted = {name: str(10 * (args.streams + args.storm)) for name in (
        "CHAT_MAX_RUNNING_PER_TENANT", "CHAT_MAX_IN_FLIGHT_PER_USER", "CHAT_MAX_IN_FLIGHT_PER_TENANT",
        "CHAT_MAX_STREAMS_PER_USER", "CHAT_MAX_STREAMS_PER_TENANT")}
    # Every answer is the stand-in's whole `--tokens`, whatever cap an earlier import or the shell set.
    backends = [{"name": "standin", "base_url": standin_url, "model": "standin", "retries": 0}]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **caps_lifted, "CHAT_MAX_NEW_TOKENS": str(10 * args.tokens),
           "INFERENCE_BACKENDS": json.dumps(backends)}
    log = open(ROOT / "var" / "bench-load-streams.log", "wb")  # noqa: SIM115 - lives as long as the children
    children = [
        subprocess.Popen([sys.executable, "-m", "inference.standin", "--port", str(standin_port), "--tokens",
                          str(args.tokens), "--tokens-per-s", str(args.tokens_per_s)], cwd=ROOT, env=env,
                         stdout=log, stderr=subprocess.STDOUT),
        subprocess.Popen([sys.executable, "-m", "deepseek_web.web_server", "-b", "127.0.0.1", "-p", str(web_port),
                          "deepseek_web.asgi:application"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
        gpu_worker_start([sys.executable, "-m", "celery", "-A", "deepseek_web", "worker", "-Q", "gpu", "-P",
                          "threads", "-c", str(args.streams + 10), "-n", "bench-load@%h", "--loglevel", "WARNING"],
                         cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
    ]
    base_url = f"http://localhost:{web_port}"
    try:
        wait_http(f"{base_url}/healthz", 60)
        wait_http(f"{standin_url}/models", 30)
        gpu_worker_wait_ready()
        direct = asyncio.run(direct_streams(standin_url, args.streams))
        results = asyncio.run(product_streams(base_url, session_key, ids))
        stormed = asyncio.run(storm(base_url, session_key, ids, args.storm, budget_s=120))
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=30)

    turns = [r for r in results if not isinstance(r, Exception)]
    finished = [r for r in turns if r.status == "done"]
    expected = "".join(chunk_text(n) for n in range(1, args.tokens + 1))
    frames = sum(len(r.seqs) for r in turns)
    garbled = sum(r.text != expected for r in finished)
    direct_gaps = [b - a for arrivals in direct for a, b in zip(arrivals, arrivals[1:], strict=False)]
    gaps = [g for r in turns for g in r.gaps]
    base_p99 = percentile(direct_gaps, 99) * 1000
    product_p99 = percentile(gaps, 99) * 1000
    print(f"streams: {args.streams} at {args.tokens_per_s} tokens/s, {args.tokens} tokens each")
    # A token lost, repeated or out of order shows in the text; a worker that fell behind sends the
    # tokens that queued up as one chunk, so there may be fewer chunk frames than tokens.
    print(f"  finished: {len(finished)}/{args.streams}   answers not exactly t1..t{args.tokens} (a dropped, "
          f"repeated or reordered token): {garbled}   client errors: {len(results) - len(turns)}   "
          f"chunk frames: {frames} for {args.streams * args.tokens} tokens   "
          f"handshakes retried (as chat.js would): {sum(r.handshake_retries for r in turns)}")
    print("  inter-chunk gap ms, stand-in direct / through the product: " + "   ".join(
        f"p{pct} {percentile(direct_gaps, pct) * 1000:.0f} / {percentile(gaps, pct) * 1000:.0f}" for pct in (50, 90, 99))
        + f"   max {max(direct_gaps, default=0) * 1000:.0f} / {max(gaps, default=0) * 1000:.0f}")
    print(f"  inter-chunk gap p99: stand-in direct {base_p99:.1f} ms (baseline), through the product "
          f"{product_p99:.1f} ms: added {product_p99 - base_p99:.1f} ms "
          f"(ratio {product_p99 / base_p99:.3f}; target: added <= 50 ms)")
    direct_late = [x for arrivals in direct for x in lateness(arrivals, args.tokens_per_s)]
    late = [x for r in turns for x in lateness(r.arrivals, args.tokens_per_s)]
    base_late, product_late = percentile(direct_late, 99) * 1000, percentile(late, 99) * 1000
    print(f"  chunk lateness against its stream's schedule, p99: stand-in direct {base_late:.1f} ms (baseline), "
          f"through the product {product_late:.1f} ms: added {product_late - base_late:.1f} ms; "
          f"p50 {percentile(direct_late, 50) * 1000:.1f} / {percentile(late, 50) * 1000:.1f} ms")
    errors = collections.Counter(f"{type(r).__name__}: {str(r)[:80]}" for r in results if isinstance(r, Exception))
    for error, count in errors.most_common(3):
        print(f"  client error x{count}: {error}")
    print(f"storm: {stormed['connected']}/{args.storm} handshakes succeeded "
          f"({stormed['first_try']} on the first try); p99 {stormed['p99_s']:.1f} s, last {stormed['last_s']:.1f} s")


if __name__ == "__main__":
    main()
