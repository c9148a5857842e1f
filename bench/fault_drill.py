"""Fault drill: `./dsw run` on a fresh data dir, then kill -9 its gpu worker and restart Redis and
PostgreSQL with turns in flight, and check that every turn took effect exactly once or failed visibly.

    python bench/fault_drill.py --kills 20 --redis-restarts 2 --pg-restarts 2

Each fault: K turns are submitted, the drill waits until one streams, then the fault (kill -9 of the
gpu worker under the run command's supervision; or Redis / PostgreSQL stopped for --outage-s and
started again), and one more turn is submitted at once. It prints per fault: the time from the fault
until every turn in flight was final, the next turn's time from the fault to its answer, and the
counts; then the totals, and each figure against the same run's fault-free turn (the baseline).

Checks (exit status 1 if one fails): every turn ends done or failed (never left pending or
streaming); no reply is duplicated (one `end` on its stream, the stored text equals what was
streamed after the last `reset`); no question or finished answer is lost; the next turn is
answered; the run command and the data services it started outlived every worker kill.
With --json, the report is one JSON object on the last line (the tests read it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Bounds, not measurements: a turn that is not final by then counts as stuck.
FINAL_DEADLINE_S = 180.0
READY_DEADLINE_S = 600.0


@dataclass
class FaultResult:
    kind: str
    turns: int
    to_final_s: float
    next_turn_s: float | None
    outcomes: dict[str, int]
    duplicates: int
    lost: int
    stuck: int


@dataclass
class Report:
    baseline_turn_s: float = 0.0
    faults: list[FaultResult] = field(default_factory=list)
    run_alive: bool = True
    services_kept: bool = True
    gpu_restarts: int = 0
    problems: list[str] = field(default_factory=list)


class RunProcess:
    """`./dsw run` as a child; its output is echoed with a prefix and its child pids are tracked."""

    def __init__(self, env: dict[str, str], port: int, verbose: bool) -> None:
        self.lines: list[str] = []
        self.pids: dict[str, list[int]] = {}
        self.ready = threading.Event()
        self.verbose = verbose
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deepseek_web.cli", "run", "--port", str(port), "--gpu-concurrency", "4"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if self.verbose:
                sys.stderr.write("  | " + line)
            if line.startswith("[dsw] started "):
                name, pid = line.split()[2], int(line.rsplit("pid ", 1)[1].rstrip(")\n"))
                self.pids.setdefault(name, []).append(pid)
            if "DeepSeek Web is ready" in line:
                self.ready.set()

    def pid(self, name: str) -> int:
        return self.pids[name][-1]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Drill:
    def __init__(self, run: RunProcess, data: Path, turns_per_fault: int) -> None:
        from chat.models import Conversation
        from tenants.models import Membership, Tenant
        from tenants.rls import tenant_context

        self.run = run
        self.data = data
        self.k = turns_per_fault
        self.tenant = Tenant.objects.get(slug="demo")
        with tenant_context(self.tenant.pk):
            membership = Membership.objects.select_related("user").get(tenant=self.tenant, user__username="employee")
            self.user = membership.user
            self.role = membership.role
            self.conversations = [Conversation.objects.create(tenant=self.tenant, user=self.user) for _ in range(4)]
        self.asked: list[tuple[int, int]] = []  # (question id, reply id)
        self.n = 0

    def submit(self) -> int:
        from audit.services import actor_for
        from chat import services
        from tenants.rls import tenant_context

        self.n += 1
        conversation = self.conversations[self.n % len(self.conversations)]
        with tenant_context(self.tenant.pk):
            question, reply = services.message_submit(
                conversation=conversation, text=f"Drill question {self.n}: name three colours.",
                actor=actor_for(user_id=self.user.pk, role=self.role),
            )
        self.asked.append((question.pk, reply.pk))
        return int(reply.pk)

    def rows(self, ids: list[int]) -> dict[int, Any]:
        from django.db import connection

        from chat.models import Message
        from tenants.rls import tenant_context

        try:
            with tenant_context(self.tenant.pk):
                return {m.pk: m for m in Message.objects.filter(pk__in=ids)}
        except Exception:  # noqa: BLE001 - the database is being restarted: ask again later
            connection.close()
            return {}

    def wait_final(self, ids: list[int], since: float) -> tuple[dict[int, float], dict[int, Any]]:
        """When each turn was first seen final (seconds after `since`), and the last rows read."""
        seen: dict[int, float] = {}
        rows: dict[int, Any] = {}
        deadline = time.monotonic() + FINAL_DEADLINE_S
        while len(seen) < len(ids) and time.monotonic() < deadline:
            rows = self.rows(ids) or rows
            for pk, row in rows.items():
                if row.is_final and pk not in seen:
                    seen[pk] = time.monotonic() - since
            time.sleep(0.2)
        return seen, self.rows(ids) or rows

    def wait_streaming(self, ids: list[int]) -> None:
        from chat.models import Message

        deadline = time.monotonic() + FINAL_DEADLINE_S
        while time.monotonic() < deadline:
            if any(r.status == Message.Status.STREAMING for r in self.rows(ids).values()):
                return
            time.sleep(0.05)

    def check(self, rows: dict[int, Any]) -> tuple[int, int]:
        """(duplicated replies, lost questions or answers) among these turns."""
        from chat import streams
        from chat.models import Message

        duplicates = lost = 0
        for row in rows.values():
            entries = streams.read_all(row)
            ends = [e for e in entries if e.kind == "end"]
            resets = [i for i, e in enumerate(entries) if e.kind == "reset"]
            after = entries[resets[-1] + 1:] if resets else entries
            text = "".join(e.fields.get("text", "") for e in after if e.kind == "token")
            if len(ends) > 1 or (row.status == Message.Status.DONE and ends and text != row.content):
                duplicates += 1
            if row.status == Message.Status.DONE and not row.content:
                lost += 1
        from tenants.rls import tenant_context

        questions = {q for q, r in self.asked if r in rows}
        with tenant_context(self.tenant.pk):
            stored = set(Message.objects.filter(pk__in=questions).values_list("pk", flat=True))
        lost += len(questions - stored)
        return duplicates, lost

    def one_turn(self) -> float | None:
        t0 = time.monotonic()
        pk = self.submit()
        seen, rows = self.wait_final([pk], t0)
        return seen[pk] if pk in seen and rows[pk].status == "done" else None

    def fault(self, kind: str, outage_s: float) -> FaultResult:
        from chat.models import Message
        from deepseek_web.services.postgres import ensure_postgres, stop_postgres
        from deepseek_web.services.redis_server import ensure_redis, stop_redis

        ids = [self.submit() for _ in range(self.k)]
        self.wait_streaming(ids)
        t0 = time.monotonic()
        next_id: int | None = None
        if kind == "kill":
            before = len(self.run.pids.get("gpu", []))
            os.kill(self.run.pid("gpu"), signal.SIGKILL)
            next_id = self.submit()
            ids.append(next_id)
            deadline = time.monotonic() + FINAL_DEADLINE_S
            while len(self.run.pids.get("gpu", [])) == before and time.monotonic() < deadline:
                time.sleep(0.1)
        else:
            stop, start = (stop_redis, ensure_redis) if kind == "redis" else (stop_postgres, ensure_postgres)
            stop(self.data)
            time.sleep(outage_s)
            start(self.data)
            from django.db import connection

            connection.close()  # this process's own connection died with the server
            next_id = self.submit()
            ids.append(next_id)
        seen, rows = self.wait_final(ids, t0)
        outcomes: dict[str, int] = {}
        for row in rows.values():
            outcomes[row.status] = outcomes.get(row.status, 0) + 1
        duplicates, lost = self.check(rows)
        in_flight = [seen[pk] for pk in ids if pk in seen and pk != next_id]
        next_ok = next_id in seen and rows[next_id].status == Message.Status.DONE
        return FaultResult(
            kind=kind, turns=len(ids), to_final_s=round(max(in_flight, default=0.0), 2),
            next_turn_s=round(seen[next_id], 2) if next_ok and next_id is not None else None,
            outcomes=outcomes, duplicates=duplicates, lost=lost, stuck=len(ids) - len(seen),
        )


def _service_pids(data: Path) -> tuple[int | None, int | None]:
    from deepseek_web.services.paths import pg_base_dir, redis_dir

    pg = pg_base_dir(data) / "data" / "postmaster.pid"
    rd = redis_dir(data) / "redis.pid"
    return (int(pg.read_text().split()[0]) if pg.exists() else None,
            int(rd.read_text().split()[0]) if rd.exists() else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--redis-restarts", type=int, default=2)
    parser.add_argument("--pg-restarts", type=int, default=2)
    parser.add_argument("--turns-per-fault", type=int, default=3)
    parser.add_argument("--outage-s", type=float, default=10.0)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--model-path", default="", help="a model folder; default the bundled model")
    parser.add_argument("--data-dir", default="", help="default: a new temporary folder")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="echo ./dsw run's output")
    args = parser.parse_args(argv)

    data = Path(args.data_dir or tempfile.mkdtemp(prefix="dsw-drill-"))
    env = {**os.environ, "DSW_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1",
           "CHAT_MAX_NEW_TOKENS": str(args.max_new_tokens), "DB_NAME": "deepseek_web"}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    # The bundled model is converted once, into the project's own data dir, not per drill.
    env.setdefault("MODELS_DIR", str(ROOT / "var" / "models"))
    if args.model_path:
        env["MODEL_PATH"] = args.model_path
    # This process talks to the same database and Redis as the run it starts.
    os.environ.update({k: env[k] for k in ("DSW_DATA_DIR", "CHAT_MAX_NEW_TOKENS", "DB_NAME")})
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deepseek_web.settings")

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # stop the run (and the services it started) on the way out

    signal.signal(signal.SIGTERM, on_term)
    report = Report()
    run = RunProcess(env, _free_port(), args.verbose)
    try:
        if not run.ready.wait(READY_DEADLINE_S):
            report.problems.append("./dsw run did not become ready")
            return _finish(report, args.json)
        import django

        django.setup()
        drill = Drill(run, data, args.turns_per_fault)
        report.baseline_turn_s = round(drill.one_turn() or -1.0, 2)
        services = _service_pids(data)
        for kind, count in (("kill", args.kills), ("redis", args.redis_restarts), ("pg", args.pg_restarts)):
            for _ in range(count):
                result = drill.fault(kind, args.outage_s)
                report.faults.append(result)
                if not args.json:
                    print(f"{kind:5} turns {result.turns}  to final {result.to_final_s:6.1f} s  next turn "
                          f"{result.next_turn_s if result.next_turn_s is not None else 'FAILED'} s  "
                          f"outcomes {result.outcomes}  duplicates {result.duplicates}  lost {result.lost}  "
                          f"stuck {result.stuck}", flush=True)
                if kind == "kill":
                    report.run_alive = report.run_alive and run.process.poll() is None
                    report.services_kept = report.services_kept and _service_pids(data) == services
            if kind == "redis" and count:
                services = _service_pids(data)  # restarted on purpose
            if kind == "pg" and count:
                services = _service_pids(data)
        report.gpu_restarts = len(run.pids.get("gpu", [])) - 1
    finally:
        run.stop()
    return _finish(report, args.json)


def _finish(report: Report, as_json: bool) -> int:
    for f in report.faults:
        if f.stuck:
            report.problems.append(f"{f.kind}: {f.stuck} turn(s) never final")
        if f.duplicates or f.lost:
            report.problems.append(f"{f.kind}: {f.duplicates} duplicated, {f.lost} lost")
        if f.next_turn_s is None:
            report.problems.append(f"{f.kind}: the next turn was not answered")
    if not report.run_alive:
        report.problems.append("./dsw run exited after a worker kill")
    if not report.services_kept:
        report.problems.append("the data services were restarted after a worker kill")
    base = report.baseline_turn_s
    for kind in ("kill", "redis", "pg"):
        rows = [f for f in report.faults if f.kind == kind]
        if not rows:
            continue
        worst = max(f.to_final_s for f in rows)
        nexts = [f.next_turn_s for f in rows if f.next_turn_s is not None]
        print(f"{kind}: {len(rows)} faults, {sum(f.turns for f in rows)} turns, "
              f"worst time to final {worst:.1f} s ({worst / base if base > 0 else float('nan'):.1f}x a "
              f"fault-free turn of {base:.1f} s), worst next turn "
              f"{max(nexts, default=float('nan')):.1f} s, duplicates {sum(f.duplicates for f in rows)}, "
              f"lost {sum(f.lost for f in rows)}, stuck {sum(f.stuck for f in rows)}, outcomes "
              f"{ {s: sum(f.outcomes.get(s, 0) for f in rows) for s in ('done', 'failed', 'cancelled')} }")
    print("problems: " + ("; ".join(report.problems) if report.problems else "none"))
    if as_json:
        print(json.dumps(asdict(report)))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
