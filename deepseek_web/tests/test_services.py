"""The embedded PostgreSQL and Redis: start, find, stop, recover, and the URLs settings use.

Runs without Django (``-p no:django``). Data dirs live directly under /tmp with short names, because
unix socket paths are limited to ~107 bytes; one test uses a long path on purpose.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from deepseek_web.services import control, paths, postgres, redis_server
from deepseek_web.services.process import ServiceInfo

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _new_data_dir(name: str = "") -> Path:
    # mkdtemp makes it 0700; ensure_postgres must itself make it traversable for pgserver.
    return Path(tempfile.mkdtemp(prefix=f"dsw-t{name}-", dir="/tmp"))


def _teardown(data: Path) -> None:
    # Always stop before deleting: a server on a deleted data dir would linger forever.
    try:
        control.stop_all(data)
    finally:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(paths.short_runtime_dir(data), ignore_errors=True)


@pytest.fixture(scope="module")
def data() -> Iterator[Path]:
    path = _new_data_dir()
    try:
        yield path
    finally:
        _teardown(path)


@pytest.fixture(scope="module")
def first_start(data: Path) -> dict[str, ServiceInfo]:
    return {"postgres": postgres.ensure_postgres(data), "redis": redis_server.ensure_redis(data)}


@pytest.fixture
def fresh_data() -> Iterator[Path]:
    path = _new_data_dir("f")
    try:
        yield path
    finally:
        _teardown(path)


@pytest.fixture
def unrelated_process() -> Iterator[psutil.Process]:
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield psutil.Process(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def _superuser_url(data: Path, dbname: str = "postgres") -> str:
    return paths.embedded_database_url(data, dbname, password=postgres.role_password(data, paths.PG_SUPERUSER))


def _pg_query(data: Path, query: str, dbname: str = "postgres") -> object:
    with psycopg.connect(_superuser_url(data, dbname), autocommit=True) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return row[0]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _stale_socket_file(path: Path) -> None:
    # A real socket inode with nobody listening: what a SIGKILLed server leaves behind.
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


def test_it_computes_urls_without_starting_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    data = Path("/srv/dsw")
    assert paths.embedded_database_url(data) == (
        "postgresql://postgres@/deepseek_web?host=/srv/dsw/pg/run&port=5432"
    )
    assert paths.embedded_database_url(data, "x", "dsw_app", "p/w") == (
        "postgresql://dsw_app:p%2Fw@/x?host=/srv/dsw/pg/run&port=5432"
    )
    assert paths.embedded_database_settings(data, "x") == {
        "HOST": "/srv/dsw/pg/run",
        "PORT": "5432",
        "USER": "postgres",
        "PASSWORD": "",
        "NAME": "x",
    }
    assert paths.embedded_redis_url(data) == "unix:///srv/dsw/redis/redis.sock"
    assert paths.embedded_redis_url(data, 1) == "unix:///srv/dsw/redis/redis.sock?db=1"
    assert paths.celery_broker_url("unix:///srv/dsw/redis/redis.sock?db=1") == (
        "redis+socket:///srv/dsw/redis/redis.sock?virtual_host=1"
    )
    assert paths.celery_broker_url("redis://cache:6379/2") == "redis://cache:6379/2"
    assert not data.exists()

    monkeypatch.setenv("DSW_DATA_DIR", "/srv/other/../dsw2")
    assert paths.data_dir() == Path("/srv/dsw2")
    monkeypatch.delenv("DSW_DATA_DIR")
    assert paths.data_dir() == PROJECT_ROOT / "var"


def test_it_starts_postgres_and_redis_on_unix_sockets_only(
    data: Path, first_start: dict[str, ServiceInfo]
) -> None:
    pg, rd = first_start["postgres"], first_start["redis"]
    assert pg.started and rd.started
    assert pg.socket == paths.postgres_socket_path(data) and pg.socket.is_socket()
    assert rd.socket == paths.redis_socket_path(data) and rd.socket.is_socket()
    assert _pg_query(data, "SHOW listen_addresses") == ""
    assert psutil.Process(pg.pid).net_connections(kind="inet") == []

    client = redis.Redis.from_url(rd.url)
    assert client.ping()
    assert client.config_get("port") == {"port": "0"}
    assert client.config_get("appendonly") == {"appendonly": "yes"}


def _refused(data: Path, role: str, password: str | None) -> bool:
    try:
        with psycopg.connect(paths.embedded_database_url(data, "postgres", role), password=password or "",
                             autocommit=True):
            return False
    except psycopg.OperationalError:
        return True


def test_it_asks_every_role_for_its_password(data: Path, first_start: dict[str, ServiceInfo]) -> None:
    postgres.ensure_roles(data)

    hba = (paths.pg_data_path(data) / "pg_hba.conf").read_text()
    assert [line.split() for line in hba.splitlines() if not line.startswith("#")] == [
        ["local", "all", "all", "scram-sha-256"]]
    for role in postgres.PG_ROLES:
        assert _refused(data, role, None)
        assert _refused(data, role, "not-the-password")
    app_url = paths.embedded_database_url(data, "postgres", paths.PG_APP_ROLE,
                                          postgres.role_password(data, paths.PG_APP_ROLE))
    with psycopg.connect(app_url, autocommit=True) as conn:
        row = conn.execute("SELECT rolsuper, rolbypassrls, rolcreaterole FROM pg_roles "
                           "WHERE rolname = current_user").fetchone()
    assert row == (False, False, False)


def test_it_moves_a_data_dir_that_trusted_every_connection_to_passwords(fresh_data: Path) -> None:
    postgres.ensure_postgres(fresh_data)
    # What a data dir made before passwords looks like: trust in pg_hba.conf, no password set.
    hba = paths.pg_data_path(fresh_data) / "pg_hba.conf"
    hba.write_text("local all all trust\n")
    with psycopg.connect(_superuser_url(fresh_data), autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
        conn.execute("ALTER ROLE postgres PASSWORD NULL")
    postgres.stop_postgres(fresh_data)

    assert postgres.ensure_postgres(fresh_data).started

    assert hba.read_text() == postgres.PG_HBA
    assert _refused(fresh_data, paths.PG_SUPERUSER, None)
    assert _pg_query(fresh_data, "SELECT current_user") == paths.PG_SUPERUSER


def test_it_creates_the_database_after_the_roles_and_pgvector(fresh_data: Path) -> None:
    control.ensure_all(fresh_data, "dsw_all")

    assert _pg_query(fresh_data, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'dsw_all'") \
        == paths.PG_OWNER_ROLE
    assert _pg_query(fresh_data, "SELECT count(*) FROM pg_extension WHERE extname = 'vector'", "dsw_all") == 1


def test_it_finds_the_running_servers(data: Path, first_start: dict[str, ServiceInfo]) -> None:
    pg, rd = postgres.ensure_postgres(data), redis_server.ensure_redis(data)

    assert not pg.started and not rd.started
    assert (pg.pid, pg.socket) == (first_start["postgres"].pid, first_start["postgres"].socket)
    assert (rd.pid, rd.socket) == (first_start["redis"].pid, first_start["redis"].socket)
    report = control.status(data)
    assert report["postgres"]["running"] and report["redis"]["running"]
    assert report["postgres"]["pid"] == pg.pid and report["redis"]["pid"] == rd.pid


def test_it_creates_the_database_and_the_vector_extension(
    data: Path, first_start: dict[str, ServiceInfo]
) -> None:
    assert postgres.ensure_database(data, "dsw_vec") is True
    assert postgres.ensure_database(data, "dsw_vec") is False

    with psycopg.connect(_superuser_url(data, "dsw_vec"), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        row = conn.execute("SELECT '[1,2,3]'::vector <=> '[1,2,4]'::vector").fetchone()
    assert row is not None
    assert 0 < row[0] < 0.01


def test_it_stops_and_restarts_on_the_existing_data(data: Path, first_start: dict[str, ServiceInfo]) -> None:
    postgres.ensure_database(data, "dsw_keep")
    redis.Redis.from_url(paths.embedded_redis_url(data)).set("kept", "yes")

    assert control.stop_all(data) == {"redis": True, "postgres": True}
    assert not paths.postgres_socket_path(data).exists()
    assert not paths.redis_socket_path(data).exists()
    report = control.status(data)
    assert not report["postgres"]["running"] and not report["redis"]["running"]
    assert control.stop_all(data) == {"redis": False, "postgres": False}

    pg, rd = postgres.ensure_postgres(data), redis_server.ensure_redis(data)
    assert pg.started and rd.started
    assert postgres.ensure_database(data, "dsw_keep") is False
    assert redis.Redis.from_url(rd.url).get("kept") == b"yes"


def test_it_recovers_from_stale_pid_and_socket_files(
    data: Path, first_start: dict[str, ServiceInfo], unrelated_process: psutil.Process
) -> None:
    control.stop_all(data)
    # PostgreSQL: postmaster.pid names a live process that is not ours (a reused pid).
    pgdata = paths.pg_data_path(data)
    (pgdata / "postmaster.pid").write_text(
        f"{unrelated_process.pid}\n{pgdata}\n1700000000\n5432\n"
        f"{paths.postgres_socket_dir(data)}\n\n  1234  5678\nready\n"
    )
    _stale_socket_file(paths.postgres_socket_path(data))
    lock = paths.postgres_socket_path(data).with_name(".s.PGSQL.5432.lock")
    lock.write_text(f"{unrelated_process.pid}\n{pgdata}\n")
    # Redis: pid file names a dead process, socket file left behind.
    paths.redis_pid_path(data).write_text(f"{_dead_pid()}\n")
    _stale_socket_file(paths.redis_socket_path(data))

    pg, rd = postgres.ensure_postgres(data), redis_server.ensure_redis(data)

    assert pg.started and rd.started
    assert _pg_query(data, "SELECT 1") == 1
    assert redis.Redis.from_url(rd.url).ping()
    assert unrelated_process.is_running()  # never kill what merely reused a pid

    # Same for Redis with a live unrelated pid in its pid file.
    redis_server.stop_redis(data)
    paths.redis_pid_path(data).write_text(f"{unrelated_process.pid}\n")
    assert redis_server.ensure_redis(data).started
    assert unrelated_process.is_running()


def test_it_lets_only_one_of_two_concurrent_starts_start_the_servers(fresh_data: Path) -> None:
    script = textwrap.dedent(
        """
        import json, sys
        from deepseek_web.services import postgres, redis_server
        pg = postgres.ensure_postgres(sys.argv[1])
        rd = redis_server.ensure_redis(sys.argv[1])
        print(json.dumps([pg.started, pg.pid, rd.started, rd.pid]))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(fresh_data)], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    results = [json.loads(proc.communicate(timeout=120)[0]) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)

    assert sorted(r[0] for r in results) == [False, True]
    assert sorted(r[2] for r in results) == [False, True]
    assert results[0][1] == results[1][1] and results[0][3] == results[1][3]
    # Both launchers have exited; the servers must outlive them.
    assert _pg_query(fresh_data, "SELECT 1") == 1
    assert redis.Redis.from_url(paths.embedded_redis_url(fresh_data)).ping()


def test_it_falls_back_to_a_short_socket_dir_for_long_data_paths() -> None:
    base = _new_data_dir("l")
    data = base / ("long-" * 20)
    try:
        sock_dir = paths.postgres_socket_dir(data)
        assert sock_dir == paths.postgres_socket_dir(data)  # pure and deterministic
        assert str(sock_dir).startswith("/tmp/dsw-")
        assert str(paths.redis_socket_path(data)).startswith(str(sock_dir.parent))
        assert not sock_dir.exists()

        pg, rd = postgres.ensure_postgres(data), redis_server.ensure_redis(data)

        assert pg.socket == sock_dir / ".s.PGSQL.5432" and pg.socket.is_socket()
        assert _pg_query(data, "SELECT 1") == 1
        assert redis.Redis.from_url(rd.url).ping()
        control.stop_all(data)
        assert not sock_dir.parent.exists()  # the /tmp fallback is removed once empty
    finally:
        _teardown(data)
        shutil.rmtree(base, ignore_errors=True)
