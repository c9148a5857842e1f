"""Row-level security: the database refuses other tenants' rows even if our code forgets.

Every table with a `tenant_id` column has RLS enabled and FORCED, with a policy comparing
`tenant_id` to `current_setting('app.tenant_id')`. The product connects as a role that owns no
table and has no BYPASSRLS. The tenant is set with `set_config(..., is_local => true)` inside a
transaction (`tenant_context`), so it ends with the transaction and never leaks to the next user
of a pooled connection. With no tenant set, the setting is empty, the policy compares with NULL,
and every tenant table reads as empty: it fails closed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import connection, connections, transaction

TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::bigint"
USER = "NULLIF(current_setting('app.user_id', true), '')::bigint"


def policy_sql(table: str, using: str | None = None, check: str | None = None) -> str:
    using = using or f"tenant_id = {TENANT}"
    check = check or f"tenant_id = {TENANT}"
    return f"""
ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON {table} USING ({using}) WITH CHECK ({check});
"""


def drop_policy_sql(table: str) -> str:
    return f"DROP POLICY IF EXISTS tenant_isolation ON {table}; ALTER TABLE {table} DISABLE ROW LEVEL SECURITY;"


def _tenant_settings_swap(tenant_id: int | None, user_id: int | None) -> tuple[str, str]:
    """Sets the transaction's tenant and user; returns the values they had, to restore later."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('app.tenant_id', true), current_setting('app.user_id', true),"
            " set_config('app.tenant_id', %s, true), set_config('app.user_id', %s, true)",
            ["" if tenant_id is None else str(tenant_id), "" if user_id is None else str(user_id)],
        )
        row = cursor.fetchone()
    return row[0] or "", row[1] or ""


@contextmanager
def tenant_context(tenant_id: int | None, user_id: int | None = None) -> Iterator[None]:
    """A transaction (or savepoint) in which the database sees one tenant and, optionally, one user.

    Nested contexts restore the outer values when they end normally; on an exception the
    savepoint's rollback undoes the setting by itself.
    """
    with transaction.atomic():
        previous = _tenant_settings_swap(tenant_id, user_id)
        yield
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('app.tenant_id', %s, true), set_config('app.user_id', %s, true)",
                           list(previous))


@contextmanager
def tenant_step(tenant_id: int | None, user_id: int | None = None) -> Iterator[None]:
    """`tenant_context` for one short step of long-running work, which then gives its connection back.

    A chat turn streams for minutes between its database steps; a thread that kept its connection
    across them would need one connection per running turn, and PostgreSQL refuses them long before
    the worker runs out of threads. After the step the connection goes back to the pool (or is
    closed, without one). Inside an outer transaction (a test's, a caller's) it is left alone.
    """
    try:
        with tenant_context(tenant_id, user_id):
            yield
    finally:
        if not connection.in_atomic_block:
            connection.close()


def current_tenant_setting() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('app.tenant_id', true)")
        return cursor.fetchone()[0] or ""


def connect_options(config: Any) -> dict[str, Any]:
    """A DATABASES entry's OPTIONS as psycopg.connect takes them: Django's own `pool` key left out."""
    return {k: v for k, v in dict(config.get("OPTIONS") or {}).items() if k != "pool"}


@contextmanager
def owner_connection(tenant_id: int | None = None) -> Iterator[Any]:
    """A connection of its own as the owner role, in autocommit, for the few privileged jobs (audit
    pruning, platform retention). Django's connection stays the app role's, with its transaction.

    Row-level security is forced on the owner too: `tenant_id` sets the tenant for the session.
    """
    import psycopg

    config = connection.settings_dict
    with psycopg.connect(host=config["HOST"] or None, port=config["PORT"] or None, dbname=config["NAME"],
                         user=str(settings.DATABASE_OWNER["USER"]),
                         password=str(settings.DATABASE_OWNER["PASSWORD"]) or None,
                         autocommit=True, **connect_options(config)) as conn:
        if tenant_id is not None:
            conn.execute("SELECT set_config('app.tenant_id', %s, false)", [str(tenant_id)])
        yield conn


@contextmanager
def as_owner(alias: str = "default") -> Iterator[Any]:
    """Reconnects `alias` as the owner role for schema work (migrate, flush), then back."""
    conn = connections[alias]
    saved = {key: conn.settings_dict.get(key) for key in settings.DATABASE_OWNER}
    # A pool keeps the role it was opened with: drop it on each switch, so the owner's connections
    # never serve the app role afterwards (nor the app role's the schema work).
    conn.close()
    _close_pool(conn)
    conn.settings_dict.update(settings.DATABASE_OWNER)
    try:
        yield conn
    finally:
        conn.close()
        _close_pool(conn)
        conn.settings_dict.update(saved)


def _close_pool(conn: Any) -> None:
    # Only PostgreSQL's (and Oracle's) wrappers have a pool; the base class has no close_pool.
    close_pool = getattr(conn, "close_pool", None)
    if close_pool is not None:
        close_pool()
