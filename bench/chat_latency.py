"""Chat latency: submit -> first chunk at a WebSocket client, minus the engine's own time to first token.

What it runs: the real stack on the embedded services, in a database of its own (`dsw_bench`) and
Redis database 2 — daphne and a `gpu` Celery worker as subprocesses, the bundled SmolLM2 on the CPU.
One client submits 50 turns one after another over one WebSocket. For each turn it measures the
time from sending `submit` to receiving the first `chunk`, and reads back the engine's own time to
first token (submit to first token inside the engine, stored in the message's timings). The
difference is what our path adds: consumer, database, Celery queue, Redis Stream, relay.

Run:  .venv/bin/python bench/chat_latency.py [--turns 50]
(after `./dsw run` or `./dsw test` has installed the venv once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

from stack import (
    ROOT,
    free_port,
    gpu_worker_start,
    gpu_worker_wait_ready,
    percentile,
    prepare_stack,
    wait_http,
)


def prepare() -> tuple[str, int, int]:
    """Services, the bench database, one user with a conversation: (cookie, conversation, tenant)."""
    prepare_stack()
    from django.contrib.auth import get_user_model
    from django.test import Client

    from chat.models import Conversation
    from deepseek_web.redis_client import sync_client
    from tenants.models import Membership, Tenant
    from tenants.rls import tenant_context

    sync_client().flushdb()
    tenant, _ = Tenant.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    user, _ = get_user_model().objects.get_or_create(username="bench-user")
    with tenant_context(tenant.pk):
        Membership.objects.get_or_create(tenant=tenant, user=user)
        conversation = Conversation.objects.create(tenant=tenant, user=user, title="bench")
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}", conversation.pk, tenant.pk


async def run_turns(ws_url: str, cookie: str, turns: int) -> list[tuple[float, int]]:
    import websockets

    results = []
    async with websockets.connect(
        ws_url, additional_headers={"Cookie": cookie, "Origin": "http://localhost"}, max_size=None
    ) as ws:
        for i in range(turns + 1):  # the first turn warms up the path and is not counted
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "submit", "text": f"Say hello to colleague number {i}."}))
            first_chunk: float | None = None
            message_id = 0
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "submitted":
                    message_id = frame["message_id"]
                elif frame["type"] == "chunk" and first_chunk is None:
                    first_chunk = time.perf_counter()
                elif frame["type"] == "end":
                    break
                elif frame["type"] == "error":
                    raise RuntimeError(frame["error"])
            if i and first_chunk is not None:
                results.append(((first_chunk - sent) * 1000, message_id))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=50)
    args = parser.parse_args()

    cookie, conversation_id, tenant_id = prepare()
    port = free_port()
    # Short answers: the figure is the time to the first chunk, and the CPU model writes slowly.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CHAT_MAX_NEW_TOKENS": "16"}
    log = open(ROOT / "var" / "bench-chat-latency.log", "wb")  # noqa: SIM115 - lives as long as the children
    web = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                            "deepseek_web.asgi:application"], cwd=ROOT, env=env,
                           stdout=log, stderr=subprocess.STDOUT)
    worker = gpu_worker_start([sys.executable, "-m", "celery", "-A", "deepseek_web", "worker", "-Q", "gpu",
                               "-P", "threads", "-c", "4", "-n", "bench-gpu@%h"], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 60)
        gpu_worker_wait_ready()
        measured = asyncio.run(run_turns(f"ws://127.0.0.1:{port}/ws/chat/{conversation_id}/", cookie, args.turns))
    finally:
        for process in (web, worker):
            process.terminate()
        for process in (web, worker):
            process.wait(timeout=30)

    from chat.models import Message
    from tenants.rls import tenant_context

    with tenant_context(tenant_id):
        timings = {m.pk: m.timings for m in Message.objects.filter(pk__in=[mid for _, mid in measured])}
    client_ms = [ms for ms, _ in measured]
    engine_ms = [timings[mid]["engine_ttft_ms"] for _, mid in measured]
    overhead_ms = [c - e for c, e in zip(client_ms, engine_ms, strict=True)]
    print(f"chat latency over {len(measured)} turns (bundled SmolLM2 on {os.environ.get('MODEL_DEVICE', 'cpu')})")
    print(f"{'':28} {'p50 ms':>9} {'p95 ms':>9}")
    for name, values in (("submit -> first chunk", client_ms), ("engine time to first token", engine_ms),
                         ("our path (difference)", overhead_ms)):
        print(f"{name:28} {percentile(values, 50):9.1f} {percentile(values, 95):9.1f}")
    p50_ratio = percentile(overhead_ms, 50) / percentile(engine_ms, 50)
    p95_ratio = percentile(overhead_ms, 95) / percentile(engine_ms, 95)
    print(f"our path / engine TTFT: p50 {p50_ratio:.2f}x, p95 {p95_ratio:.2f}x")
    print(f"median per-turn ratio: {statistics.median(o / e for o, e in zip(overhead_ms, engine_ms, strict=True)):.2f}x")


if __name__ == "__main__":
    main()
