"""Fair GPU sharing: tenant B's time to first token while a user of tenant A floods 60 long turns.

What it runs: the real stack on the embedded services, in the bench database (`dsw_bench`) and
Redis database 2 — daphne and a `gpu` Celery worker (threads) as subprocesses, the bundled SmolLM2
on the CPU with few engine slots, as fits a small CPU box. Two phases, each with fresh processes:

- `fifo`: CHAT_DISPATCH=fifo, every turn straight onto the gpu queue (the behaviour before
  chat/dispatch.py; issue 12 measured 436 s against 22 ms idle);
- `fair`: CHAT_DISPATCH=fair (the default), with CHAT_MAX_RUNNING_PER_TENANT below the slots.

In each phase tenant B's user first asks a few questions on the idle system (the baseline, in the
same run and processes), then tenant A's user submits `--flood` turns at once over one WebSocket,
and B asks again. Each figure is submit -> first chunk at B's WebSocket client. It prints each
phase's flooded TTFT as a ratio of its idle TTFT. Goal of issue 12: fair <= 2x.

Run:  .venv/bin/python bench/fairness.py [--flood 60] [--tokens 48]
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
from typing import Any

from stack import ROOT, free_port, gpu_worker_start, gpu_worker_wait_ready, prepare_stack, wait_http

SLOTS = 4  # engine slots (MODEL_MAX_BATCH) and gpu worker threads
RUNNING_CAP = 3  # CHAT_MAX_RUNNING_PER_TENANT in the fair phase: one slot stays free for others


def prepare() -> dict[str, Any]:
    """Two tenants, one user each with a conversation: their session cookies and conversation ids."""
    prepare_stack()
    from django.contrib.auth import get_user_model
    from django.test import Client

    from chat.models import Conversation
    from tenants.models import Membership, Tenant
    from tenants.rls import tenant_context

    out: dict[str, Any] = {}
    for name in ("a", "b"):
        tenant, _ = Tenant.objects.get_or_create(slug=f"fair-{name}", defaults={"name": f"Fair {name.upper()}"})
        user, _ = get_user_model().objects.get_or_create(username=f"fair-user-{name}")
        with tenant_context(tenant.pk):
            Membership.objects.get_or_create(tenant=tenant, user=user)
            conversation = Conversation.objects.create(tenant=tenant, user=user, title="fairness bench")
        client = Client()
        client.force_login(user)
        out[name] = {"cookie": f"sessionid={client.cookies['sessionid'].value}", "conversation": conversation.pk,
                     "tenant": tenant.pk}
    return out


def reset_state(world: dict[str, Any]) -> None:
    """Ends every unfinished turn of the bench tenants and empties the bench's Redis database."""
    from django.utils import timezone

    from chat.models import Message
    from deepseek_web.redis_client import sync_client
    from tenants.rls import tenant_context

    for name in ("a", "b"):
        with tenant_context(world[name]["tenant"]):
            Message.objects.filter(status__in=[Message.Status.PENDING, Message.Status.STREAMING]).update(
                status=Message.Status.CANCELLED, updated_at=timezone.now())
    sync_client().flushdb()


async def socket(port: int, who: dict[str, Any]) -> Any:
    import websockets

    return await websockets.connect(f"ws://127.0.0.1:{port}/ws/chat/{who['conversation']}/",
                                    additional_headers={"Cookie": who["cookie"], "Origin": f"http://127.0.0.1:{port}"},
                                    max_size=None)


async def ask(ws: Any, text: str) -> float:
    """Submit -> first chunk of this turn, in ms; waits for its end."""
    sent = time.perf_counter()
    await ws.send(json.dumps({"type": "submit", "text": text}))
    first: float | None = None
    message_id = None
    while True:
        frame = json.loads(await ws.recv())
        if frame["type"] == "submitted" and message_id is None:
            message_id = frame["message_id"]
        elif frame["type"] == "chunk" and frame["message_id"] == message_id and first is None:
            first = time.perf_counter()
        elif frame["type"] == "end" and frame["message_id"] == message_id:
            return ((first or time.perf_counter()) - sent) * 1000
        elif frame["type"] == "error":
            raise RuntimeError(frame["error"])


async def drain(ws: Any) -> None:
    """Reads (and drops) the flooding user's frames, so their socket never backs up."""
    try:
        async for _ in ws:
            pass
    except Exception:  # noqa: BLE001 - the socket closes when the phase ends; nothing to report
        return


async def measure(port: int, world: dict[str, Any], flood: int, asks: int) -> tuple[list[float], list[float]]:
    b = await socket(port, world["b"])
    await ask(b, "Warm up: say hello.")
    idle = [await ask(b, f"Say hello to colleague number {i}.") for i in range(3)]
    a = await socket(port, world["a"])
    for i in range(flood):
        await a.send(json.dumps({"type": "submit",
                                 "text": f"Write a long, detailed essay about the history of topic {i}."}))
    reader = asyncio.create_task(drain(a))
    await asyncio.sleep(2)  # A's turns are stored, queued and the first are running
    flooded = [await ask(b, f"Say hello to colleague number {i}, please.") for i in range(asks)]
    reader.cancel()
    await a.close()
    await b.close()
    return idle, flooded


def phase(mode: str, world: dict[str, Any], flood: int, asks: int) -> tuple[list[float], list[float]]:
    reset_state(world)
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CHAT_DISPATCH": mode,
           "CHAT_MAX_RUNNING_PER_TENANT": str(RUNNING_CAP), "CHAT_MAX_IN_FLIGHT_PER_USER": str(flood + 10),
           "MODEL_MAX_BATCH": str(SLOTS)}
    log = open(ROOT / "var" / f"bench-fairness-{mode}.log", "wb")  # noqa: SIM115 - lives as long as the children
    web = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                            "deepseek_web.asgi:application"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    worker = gpu_worker_start([sys.executable, "-m", "celery", "-A", "deepseek_web", "worker", "-Q", "gpu",
                               "-P", "threads", "-c", str(SLOTS), "-n", f"bench-fair-{mode}@%h"], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 60)
        gpu_worker_wait_ready()
        return asyncio.run(measure(port, world, flood, asks))
    finally:
        for process in (web, worker):
            process.terminate()
        for process in (web, worker):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        reset_state(world)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=60, help="turns tenant A's user submits at once")
    parser.add_argument("--tokens", type=int, default=48, help="CHAT_MAX_NEW_TOKENS: the length of every answer")
    parser.add_argument("--asks", type=int, default=3, help="tenant B's questions during the fair phase's flood")
    args = parser.parse_args()
    os.environ["CHAT_MAX_NEW_TOKENS"] = str(args.tokens)
    world = prepare()
    results = {"fifo": phase("fifo", world, args.flood, 1), "fair": phase("fair", world, args.flood, args.asks)}
    print(f"tenant B's submit -> first chunk while tenant A floods {args.flood} turns of {args.tokens} tokens "
          f"(bundled SmolLM2 on the CPU, {SLOTS} slots, fair cap {RUNNING_CAP} per tenant)")
    print(f"{'phase':6} {'idle ms':>9} {'flooded ms':>11} {'ratio':>7}")
    for mode, (idle, flooded) in results.items():
        base, loaded = statistics.median(idle), statistics.median(flooded)
        print(f"{mode:6} {base:9.1f} {loaded:11.1f} {loaded / base:6.2f}x")
    fifo_ratio = statistics.median(results["fifo"][1]) / statistics.median(results["fifo"][0])
    fair_ratio = statistics.median(results["fair"][1]) / statistics.median(results["fair"][0])
    print(f"fair vs fifo under the flood: {fair_ratio / fifo_ratio:.3f}x of fifo's ratio; goal fair <= 2x idle: "
          f"{'met' if fair_ratio <= 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
