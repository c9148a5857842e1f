"""Both embedded servers at once: ensure_all, stop_all and status (what ``python -m
deepseek_web.services`` drives)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepseek_web.services import postgres, redis_server
from deepseek_web.services.paths import (
    DEFAULT_DBNAME,
    PG_OWNER_ROLE,
    embedded_database_url,
    embedded_redis_url,
    pg_data_path,
    pg_log_path,
    postgres_socket_path,
    redis_log_path,
    redis_socket_path,
    resolve_data_dir,
)
from deepseek_web.services.process import ServiceInfo


def ensure_all(data: Path | str | None = None, dbname: str = DEFAULT_DBNAME) -> dict[str, ServiceInfo]:
    data = resolve_data_dir(data)
    pg = postgres.ensure_postgres(data)
    # Roles (and pgvector in template1) first: a database created before them would lack the
    # extension and belong to the superuser instead of the owner role that migrates it.
    postgres.ensure_roles(data)
    postgres.ensure_database(data, dbname, owner=PG_OWNER_ROLE)
    return {"postgres": pg, "redis": redis_server.ensure_redis(data)}


def stop_all(data: Path | str | None = None) -> dict[str, bool]:
    data = resolve_data_dir(data)
    # Redis first: workers reconnecting to it may still want to write results to PostgreSQL.
    return {"redis": redis_server.stop_redis(data), "postgres": postgres.stop_postgres(data)}


def status(data: Path | str | None = None) -> dict[str, Any]:
    """Read-only view of both services (starts nothing, takes no locks)."""
    data = resolve_data_dir(data)
    pg_pid = postgres.live_pid(data)
    redis_pid = redis_server.live_pid(data)
    return {
        "data_dir": str(data),
        "postgres": {
            "running": pg_pid is not None and postgres.answers(data),
            "pid": pg_pid,
            "socket": str(postgres_socket_path(data)),
            "url": embedded_database_url(data),
            "log": str(pg_log_path(data)),
            "initialized": (pg_data_path(data) / "PG_VERSION").exists(),
        },
        "redis": {
            "running": redis_pid is not None,
            "pid": redis_pid,
            "socket": str(redis_socket_path(data)),
            "url": embedded_redis_url(data),
            "log": str(redis_log_path(data)),
        },
    }
