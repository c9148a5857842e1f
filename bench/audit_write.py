"""Audit write cost: what `audit_record` adds to an action, under 8 concurrent writers.

The action is a real one: rename a conversation (one UPDATE in a transaction). The baseline runs
that transaction alone; the audited run adds the `audit_record` call inside the same transaction,
as every service does. Both run with 8 threads, each on its own database connection, first all on
one tenant (one chain: writers serialise on its lock), then one tenant per thread (8 chains).
It prints p50/p99 latency per transaction, transactions per second, and the ratios audited/baseline.

Run:  .venv/bin/python bench/audit_write.py [--per-writer 200]
(after `./dsw run` or `./dsw test` has installed the venv once). It uses its own database, dsw_bench.
"""

from __future__ import annotations

import argparse
import threading
import time

from stack import prepare_stack

WRITERS = 8


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))]


def run(per_writer: int, tenants: list[int], conversations: list[int], audited: bool) -> tuple[list[float], float]:
    from django.db import connections

    from audit.services import actor_for, audit_record
    from chat.models import Conversation
    from tenants.rls import tenant_context

    latencies: list[float] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        tenant_id, conversation_id = tenants[n], conversations[n]
        actor = actor_for(user_id=1, role="employee", name="bench", ip="127.0.0.1", user_agent="bench")
        mine = []
        for i in range(per_writer):
            start = time.perf_counter()
            with tenant_context(tenant_id):
                Conversation.objects.filter(pk=conversation_id).update(title=f"title {i}")
                if audited:
                    audit_record(tenant_id=tenant_id, actor=actor, action="conversation.rename",
                                 target_type="conversation", target_id=conversation_id, payload={"title": f"title {i}"})
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)
        connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-writer", type=int, default=200)
    args = parser.parse_args()
    prepare_stack()
    from django.contrib.auth import get_user_model

    from chat.models import Conversation
    from tenants.models import Tenant

    user, _ = get_user_model().objects.get_or_create(username="bench-audit")
    tenants = [Tenant.objects.get_or_create(slug=f"bench-audit-{n}", defaults={"name": f"Bench {n}"})[0]
               for n in range(WRITERS)]
    from tenants.rls import tenant_context

    def conversation_in(tenant: Tenant) -> int:
        with tenant_context(tenant.pk):
            return Conversation.objects.create(tenant=tenant, user=user).pk

    # One chain: every writer renames its own conversation of the same tenant. Eight chains: one
    # tenant (and conversation) per writer.
    one_chain = ([tenants[0].pk] * WRITERS, [conversation_in(tenants[0]) for _ in range(WRITERS)])
    eight_chains = ([t.pk for t in tenants], [conversation_in(t) for t in tenants])

    def measure(label: str, setup: tuple[list[int], list[int]], audited: bool) -> tuple[float, float, float]:
        latencies, wall = run(args.per_writer, setup[0], setup[1], audited)
        p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
        rate = len(latencies) / wall
        print(f"{label:34} {p50:8.2f} {p99:8.2f} {rate:9.0f}")
        return p50, p99, rate

    run(20, one_chain[0], one_chain[1], True)  # warm up connections and caches
    print(f"{WRITERS} writers x {args.per_writer} transactions each")
    print(f"{'':34} {'p50 ms':>8} {'p99 ms':>8} {'tx/s':>9}")
    base = measure("rename only (baseline)", one_chain, False)
    one = measure("rename + audit, one tenant chain", one_chain, True)
    many = measure("rename + audit, 8 tenant chains", eight_chains, True)

    def ratio(figures: tuple[float, float, float], index: int) -> float:
        return figures[index] / base[index]

    print(f"audited/baseline, one chain:  p50 {ratio(one, 0):.2f}x, p99 {ratio(one, 1):.2f}x, "
          f"throughput {ratio(one, 2):.2f}x ({one[2]:.0f} audit events/s)")
    print(f"audited/baseline, 8 chains:   p50 {ratio(many, 0):.2f}x, p99 {ratio(many, 1):.2f}x, "
          f"throughput {ratio(many, 2):.2f}x ({many[2]:.0f} audit events/s)")


if __name__ == "__main__":
    main()
