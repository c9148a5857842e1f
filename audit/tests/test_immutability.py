"""The trail is append-only in the database itself, not just in our code."""

from __future__ import annotations

from typing import Any

import psycopg.errors
import pytest
from django.conf import settings
from django.db import DatabaseError, connection, transaction

from audit.models import AuditEvent
from audit.services import actor_for, audit_record
from tenants.rls import as_owner, owner_connection, tenant_context


@pytest.fixture
def event(world) -> AuditEvent:
    return audit_record(tenant_id=world.tenant_a.pk, actor=actor_for(user_id=world.alice.pk, role="employee"),
                        action="conversation.create")


def run_as(role: str | None, sql: str, params: list[Any] | None = None) -> None:
    """One statement in a savepoint, optionally as another role; the savepoint undoes both."""
    with transaction.atomic(), connection.cursor() as cursor:
        if role:
            cursor.execute(f"SET LOCAL ROLE {role}")
        cursor.execute(sql, params or [])


APP_ROLE = settings.DB_APP_ROLE
FORBIDDEN_FOR_APP = [
    "UPDATE audit_auditevent SET action = 'auth.login'",
    "DELETE FROM audit_auditevent",
    "TRUNCATE audit_auditevent",
    "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_append_only",
    "ALTER TABLE audit_auditevent DISABLE TRIGGER ALL",
    "UPDATE audit_auditcheckpoint SET seq = 0",
    "DELETE FROM audit_auditcheckpoint",
]


@pytest.mark.parametrize("sql", FORBIDDEN_FOR_APP)
def test_it_refuses_changes_by_the_app_role(event, world, sql) -> None:
    with tenant_context(world.tenant_a.pk):  # the rows are visible: only the privileges refuse
        with pytest.raises(DatabaseError) as caught:
            run_as(APP_ROLE, sql)
        assert isinstance(caught.value.__cause__, (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectNotInPrerequisiteState))
        assert AuditEvent.objects.filter(pk=event.pk, action="conversation.create").exists()


def test_it_lets_the_app_role_insert_and_read(event, world) -> None:
    with tenant_context(world.tenant_a.pk), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL ROLE {APP_ROLE}")
        cursor.execute("SELECT count(*) FROM audit_auditevent")
        assert cursor.fetchone()[0] == 1
        cursor.execute(
            "INSERT INTO audit_auditevent (tenant_id, seq, occurred_at, actor_role, user_agent, action, category,"
            " target_type, target_id, outcome, payload, trace_id, prev_hash, hash, actor_name)"
            " VALUES (%s, 99, now(), '', '', 'x', '', '', '', 'success', '{}', '', '', '', '')",
            [world.tenant_a.pk],
        )
        transaction.set_rollback(True)


def test_it_gives_the_app_role_no_superuser_bypassrls_or_ownership(db: None) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", [APP_ROLE])
        assert cursor.fetchone() == (False, False)
        cursor.execute("SELECT count(*) FROM pg_tables WHERE tableowner = %s", [APP_ROLE])
        assert cursor.fetchone()[0] == 0


# Outside a test transaction: TRUNCATE inside one is refused earlier, for unrelated pending triggers;
# and as_owner() reconnects, which it cannot do inside the test's transaction.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("sql", [
    "UPDATE audit_auditevent SET action = 'auth.login'", "DELETE FROM audit_auditevent", "TRUNCATE audit_auditevent",
])
def test_it_refuses_changes_even_by_the_table_owner(event, world, sql) -> None:
    with as_owner():
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user, usesuper FROM pg_user WHERE usename = current_user")
            assert cursor.fetchone() == (settings.DATABASE_OWNER["USER"], False)
        with tenant_context(world.tenant_a.pk):  # the owner is under row-level security too (FORCE)
            with pytest.raises(DatabaseError, match="append-only"):
                run_as(None, sql)
            assert AuditEvent.objects.filter(pk=event.pk).exists()
    with tenant_context(world.tenant_a.pk):
        assert AuditEvent.objects.filter(pk=event.pk).exists()


@pytest.mark.django_db(transaction=True)  # the owner's privileged job runs on a connection of its own
def test_it_will_not_prune_events_inside_the_retention_period(event, world) -> None:
    from audit.chain import checkpoint_mac

    prune = ("SELECT audit_prune(%s, %s, %s, %s)",
             [world.tenant_a.pk, event.seq, event.hash, checkpoint_mac(world.tenant_a.pk, event.seq, event.hash)])
    # The app role may not prune at all (issue 12: it could, with a MAC of its choosing) ...
    with tenant_context(world.tenant_a.pk), \
            pytest.raises(DatabaseError, match="permission denied for function audit_prune"):
        run_as(APP_ROLE, *prune)
    # ... and the owner role's privileged job is refused a recent event by the function itself.
    with owner_connection(tenant_id=world.tenant_a.pk) as owner, \
            pytest.raises(psycopg.errors.RaiseException, match="not an expired event"):
        owner.execute(*prune)
    with tenant_context(world.tenant_a.pk):
        assert AuditEvent.objects.filter(pk=event.pk).exists()
