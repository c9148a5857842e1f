"""`./dsw run` and `./dsw test`: the two commands of the README (after scripts/bootstrap.sh).

run:  keys (generated on the first start) -> embedded services -> migrate -> demo tenant -> bundled
      model -> daphne, the `gpu` worker, the `ingest` worker, the `maintenance` worker and beat;
      prints the URL and logins; supervises them (a process that dies is started again, with
      backoff; the data services keep running); Ctrl-C stops everything it started.
test: keys -> embedded services -> pytest (pytest-django makes its own test database).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from deepseek_web.celery import GPU_READY_KEY
from deepseek_web.services.paths import data_dir
from deepseek_web.services.postgres import ensure_database, ensure_postgres, ensure_roles, stop_postgres
from deepseek_web.services.redis_server import ensure_redis, stop_redis
from deepseek_web.services.secrets_files import ensure_secret_files

ROOT = Path(__file__).resolve().parent.parent
# Tests use their own Redis database, so a `run` on the same data dir never consumes test tasks.
TEST_REDIS_DB = "1"


def log(text: str) -> None:
    print(f"[dsw] {text}", flush=True)


def start_services() -> list[str]:
    """Starts the embedded PostgreSQL/Redis unless URLs are configured. Returns what it started."""
    started = []
    data = data_dir()
    if not os.environ.get("DATABASE_URL"):
        info = ensure_postgres(data)
        ensure_roles(data)
        log(f"PostgreSQL {'started' if info.started else 'already running'} ({info.seconds:.1f} s): {info.socket}")
        if info.started:
            started.append("postgres")
    if not os.environ.get("REDIS_URL"):
        info = ensure_redis(data)
        log(f"Redis {'started' if info.started else 'already running'} ({info.seconds:.1f} s): {info.socket}")
        if info.started:
            started.append("redis")
    return started


def ensure_keys() -> None:
    """The keys settings read when the environment sets none; generated on the first start only.

    Before anything imports settings: with DEBUG off they refuse to start without strong keys.
    """
    for path in ensure_secret_files(data_dir()):
        log(f"generated {path}: keep it, apart from the database's backups")


def stop_services(started: list[str]) -> None:
    data = data_dir()
    if "redis" in started:
        stop_redis(data)
    if "postgres" in started:
        stop_postgres(data)
    if started:
        log(f"stopped {', '.join(started)}")


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deepseek_web.settings")
    import django

    django.setup()


def free_port(preferred: int) -> int:
    for port in range(preferred, preferred + 50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError(f"no free port in {preferred}..{preferred + 49}")


def prepare_database() -> None:
    from django.conf import settings
    from django.core.management import call_command

    if not os.environ.get("DATABASE_URL"):
        name, owner = str(settings.DATABASES["default"]["NAME"]), str(settings.DATABASE_OWNER["USER"])
        ensure_database(data_dir(), name, owner=owner)
    call_command("migrate", interactive=False, verbosity=0)
    log("database migrated")


class DatabaseCapacityError(RuntimeError):
    """The processes `run` would start need more PostgreSQL connections than the server allows."""


def connections_needed(threads: int, pool_max_size: int) -> int:
    """Connections one process may hold at once: its threads, or fewer with a pool (they wait for one)."""
    return min(threads, pool_max_size) if pool_max_size > 0 else threads


def database_capacity_check(*, processes: dict[str, int], pool_max_size: int, max_connections: int,
                            reserved: int) -> str:
    """Checks the processes' threads (name -> thread count) against PostgreSQL's connection limit.

    Returns the summary to log; raises DatabaseCapacityError, naming the settings to change, when
    the worst case does not fit. Without this check the shortfall shows only under load, as turns
    failing with "remaining connection slots are reserved" (issue 12, finding 16).
    """
    needs = {name: connections_needed(threads, pool_max_size) for name, threads in processes.items()}
    # One more for this process (migrations, seeding) and one for an operator's psql.
    needed = sum(needs.values()) + 2
    available = max_connections - reserved
    detail = ", ".join(f"{name} {n}" for name, n in needs.items())
    summary = (f"database connections: up to {needed} needed ({detail}, +2 spare) of {available} available "
               f"(max_connections {max_connections} - {reserved} reserved)")
    if needed > available:
        pooling = (f"DB_POOL_MAX_SIZE={pool_max_size} per process" if pool_max_size > 0
                   else "one connection per thread (DB_POOL_MAX_SIZE=0)")
        raise DatabaseCapacityError(
            f"{summary}: refusing to start. With {pooling}, lower GPU_CONCURRENCY or DB_POOL_MAX_SIZE, "
            "or raise PostgreSQL's max_connections."
        )
    return summary


def database_limits() -> tuple[int, int]:
    """PostgreSQL's max_connections and the slots it keeps from the application role."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT name, setting FROM pg_settings WHERE name IN "
                       "('max_connections', 'superuser_reserved_connections', 'reserved_connections')")
        values = {name: int(setting) for name, setting in cursor.fetchall()}
    return values["max_connections"], values.get("superuser_reserved_connections", 0) + values.get(
        "reserved_connections", 0)


def worker_capacity_warning(threads: int) -> str:
    """What a Celery worker with this many threads logs at start when it alone could take more
    connections than the server has free; "" when it fits or the server cannot be asked."""
    from django.conf import settings
    from django.db import DatabaseError, connection

    try:
        max_connections, reserved = database_limits()
        database_capacity_check(processes={"this worker": threads}, pool_max_size=settings.DB_POOL_MAX_SIZE,
                                max_connections=max_connections, reserved=reserved)
    except DatabaseCapacityError as exc:
        return str(exc)
    except DatabaseError:
        return ""  # the database is down: the worker's tasks will say so
    finally:
        if not connection.in_atomic_block:
            connection.close()  # the worker's threads take their own; this one goes back
    return ""


def check_database_capacity(gpu_concurrency: int) -> None:
    """`database_capacity_check` for the processes `run` starts, against the server's real limits."""
    from django.conf import settings

    max_connections, reserved = database_limits()
    # daphne runs its database work on asgiref's executor threads; the ingest worker forks 2
    # processes of one thread each; beat uses one.
    web_threads = min(32, (os.cpu_count() or 1) + 4)
    log(database_capacity_check(
        processes={"web": web_threads, "gpu": gpu_concurrency, "ingest-1": 1, "ingest-2": 1, "beat": 1},
        pool_max_size=settings.DB_POOL_MAX_SIZE, max_connections=max_connections, reserved=reserved,
    ))


def prepare_model() -> None:
    from django.conf import settings

    if settings.MODEL_PATH:
        return
    from inference.engine import default_model_dir

    t0 = time.monotonic()
    path = default_model_dir(Path(settings.MODELS_DIR))
    log(f"bundled chat model ready in {time.monotonic() - t0:.1f} s: {path}")


def wait_ready(url: str, timeout: float, supervisor: Supervisor) -> bool:
    """Waits until daphne answers and the gpu worker has loaded its models, supervising meanwhile
    (a worker that dies while it loads is started again)."""
    import urllib.request

    from deepseek_web.redis_client import sync_client

    deadline = time.monotonic() + timeout
    web = worker = False
    while time.monotonic() < deadline:
        if not web:
            try:
                with urllib.request.urlopen(url + "healthz", timeout=2) as response:
                    web = response.status == 200
            except OSError:
                pass
        worker = worker or bool(sync_client().exists(GPU_READY_KEY))
        if web and worker:
            return True
        supervisor.tick()
        time.sleep(0.25)
    return False


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM while starting up: stop what was started, in order

    signal.signal(signal.SIGTERM, on_term)
    ensure_keys()
    started = start_services()
    supervisor = Supervisor()
    try:
        setup_django()
        prepare_database()
        from console.services import demo_tenant_seed
        from deepseek_web.redis_client import sync_client
        from knowledge.services.knowledge_bases import demo_knowledge_seed
        from tenants.models import Tenant

        check_database_capacity(args.gpu_concurrency)
        logins = demo_tenant_seed()
        demo_knowledge_seed(tenant=Tenant.objects.get(slug="demo"))
        prepare_model()
        sync_client().delete(GPU_READY_KEY)

        port = free_port(args.port)
        python = sys.executable
        commands = {
            "web": [python, "-m", "deepseek_web.web_server", "-b", args.host, "-p", str(port), "deepseek_web.asgi:application"],
            # Threads, not processes: every concurrent turn shares the one engine (and its
            # continuous batch) held by this process.
            "gpu": [python, "-m", "celery", "-A", "deepseek_web", "worker", "-Q", "gpu", "-P", "threads",
                    "-c", str(args.gpu_concurrency), "-n", "gpu@%h", "--loglevel", "INFO"],
            "ingest": [python, "-m", "celery", "-A", "deepseek_web", "worker", "-Q", "ingest", "-c", "2",
                       "-n", "ingest@%h", "--loglevel", "INFO"],
            # The stale-turn sweep's own worker: it must run when the gpu worker does not.
            "maintenance": [python, "-m", "celery", "-A", "deepseek_web", "worker", "-Q", "maintenance",
                            "-P", "solo", "-n", "maintenance@%h", "--loglevel", "INFO"],
            "beat": [python, "-m", "celery", "-A", "deepseek_web", "beat", "--loglevel", "INFO",
                     "-s", str(data_dir() / "celerybeat-schedule")],
        }
        for name, command in commands.items():
            supervisor.add(name, command)

        url = f"http://{'localhost' if args.host in ('127.0.0.1', '0.0.0.0') else args.host}:{port}/"
        ready = wait_ready(url, timeout=600, supervisor=supervisor)
        elapsed = time.monotonic() - t0
        print()
        print(f"  DeepSeek Web is {'ready' if ready else 'starting (the model worker is still loading)'}"
              f" after {elapsed:.1f} s: {url}")
        print("  Demo logins (tenant 'Demo Company'):")
        for login in logins:
            print(f"    {login.role:<16} {login.username:<11} password: {login.password}")
        print("  Press Ctrl-C to stop.\n", flush=True)
        return supervisor.run()
    except KeyboardInterrupt:
        return 0
    except DatabaseCapacityError as exc:
        log(str(exc))
        return 2
    finally:
        supervisor.stop()
        stop_services(started)


# A child that ran this long before it died is restarted after the shortest pause again. Short on
# purpose: a crash loop (a bad setting, a broken import) dies within seconds of starting, while a
# worker killed once it was serving must come back at once, however often that happens.
STABLE_AFTER_S = 15.0
BACKOFF_MAX_S = 30.0


@dataclass
class Child:
    name: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # deaths in a row, each after less than STABLE_AFTER_S
    restart_at: float | None = None
    restarts: int = 0


@dataclass
class Supervisor:
    """Keeps `run`'s processes alive: a child that exits is started again after a backoff (1 s,
    2 s, 4 s … up to BACKOFF_MAX_S while it keeps dying young), and nothing else is touched: the
    data services and the other children keep running. Only Ctrl-C or SIGTERM stops everything.

    Hand-written rather than supervisord or circus: those run as their own daemon with their own
    config, while these children share this command's lifetime, its embedded services and its
    first-run steps (keys, migrations, demo tenant) and must stop in order with it.
    """

    children: list[Child] = field(default_factory=list)
    stopping: bool = False

    def add(self, name: str, command: list[str]) -> None:
        child = Child(name, command)
        self.children.append(child)
        self._start(child)

    def _start(self, child: Child) -> None:
        # Own session: Ctrl-C reaches only this process, which then stops children in order.
        child.process = subprocess.Popen(child.command, cwd=ROOT, start_new_session=True)
        child.started_at = time.monotonic()
        child.restart_at = None
        log(f"started {child.name} (pid {child.process.pid})")

    def tick(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self._start(child)
                continue
            if child.process is None or child.process.poll() is None:
                continue
            lived = now - child.started_at
            child.failures = 0 if lived >= STABLE_AFTER_S else child.failures + 1
            pause = min(BACKOFF_MAX_S, 2.0 ** max(0, child.failures - 1))
            child.restart_at = now + pause
            log(f"{child.name} (pid {child.process.pid}) exited with {child.process.returncode} after "
                f"{lived:.1f} s; restarting it in {pause:.0f} s")

    def run(self) -> int:
        def on_signal(signum: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not self.stopping:
            self.tick()
            time.sleep(0.5)
        log("stopping…")
        return 0

    def stop(self) -> None:
        # Web first (no new turns), then workers (warm shutdown finishes running tasks), then beat.
        running = [c.process for c in self.children if c.process is not None and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test(args: argparse.Namespace) -> int:
    # Tests use the data dir's keys, like `run` (the production-settings tests need a separate
    # audit key, and a fresh clone has none yet).
    ensure_keys()
    started = start_services()
    try:
        env = dict(os.environ)
        env.setdefault("DSW_REDIS_DB", TEST_REDIS_DB)
        env.setdefault("PYTHONUNBUFFERED", "1")
        command = [sys.executable, "-m", "pytest", *args.pytest_args]
        log("running: " + " ".join(command))
        return subprocess.call(command, cwd=ROOT, env=env)
    finally:
        stop_services(started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dsw")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="start everything with embedded defaults")
    run_parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    run_parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    run_parser.add_argument("--gpu-concurrency", type=int, default=int(os.environ.get("GPU_CONCURRENCY", "8")))
    sub.add_parser("test", help="run the whole test suite; further arguments go to pytest")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["test"]:
        # Everything after `test` belongs to pytest, options included (argparse would claim them).
        return test(argparse.Namespace(pytest_args=argv[1:]))
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
