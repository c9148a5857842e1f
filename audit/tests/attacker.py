"""An attacker with full database access: the database superuser, on a connection of its own.

Neither the app role nor the owner may switch triggers off (`session_replication_role` is for
superusers only), so tamper tests commit their data (`transaction=True`) and change it through
this connection, outside Django's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from django.db import connection

from deepseek_web.services.paths import PG_SUPERUSER, data_dir
from deepseek_web.services.secrets_files import pg_password_path, read_secret


@contextmanager
def superuser_connection() -> Iterator[psycopg.Connection[Any]]:
    """The superuser, in autocommit, on the test database Django is using."""
    settings = connection.settings_dict
    with psycopg.connect(host=settings["HOST"] or None, port=settings["PORT"] or None, user=PG_SUPERUSER,
                         password=read_secret(pg_password_path(data_dir(), PG_SUPERUSER)),
                         dbname=settings["NAME"], autocommit=True) as conn:
        yield conn


@contextmanager
def triggers_off(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Cursor[Any]]:
    """One committed transaction of `conn` with the append-only triggers off, as only a superuser can."""
    with conn.transaction(), conn.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        yield cursor
