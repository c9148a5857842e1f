"""Row-level security is the backstop: the database itself refuses other tenants' rows."""

from __future__ import annotations

import random

import pytest
from django.conf import settings
from django.db import connection
from django.http import HttpResponse
from django.test import RequestFactory

from audit.services import actor_for, audit_record
from chat.models import Conversation, Message
from tenants.middleware import TenantMiddleware
from tenants.rls import current_tenant_setting, tenant_context


def tenant_tables() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND column_name = 'tenant_id' ORDER BY table_name"
        )
        return [row[0] for row in cursor.fetchall()]


def test_it_forces_rls_with_a_policy_on_every_table_with_a_tenant_id(db: None) -> None:
    tables = tenant_tables()
    assert {"chat_conversation", "chat_message", "tenants_membership", "audit_auditevent",
            "knowledge_chunk"} <= set(tables)
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(
                "SELECT c.relrowsecurity, c.relforcerowsecurity,"
                " (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid)"
                " FROM pg_class c WHERE c.relname = %s AND c.relnamespace = 'public'::regnamespace",
                [table],
            )
            enabled, forced, policies = cursor.fetchone()
            assert enabled and forced and policies >= 1, f"{table} lacks forced row-level security"


def test_it_connects_as_a_role_without_superuser_bypassrls_or_ownership(db: None) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        assert cursor.fetchone()[0] == settings.DB_APP_ROLE
        cursor.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        assert cursor.fetchone() == (False, False)
        cursor.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner"
            " WHERE r.rolname = current_user AND c.relnamespace = 'public'::regnamespace"
        )
        assert cursor.fetchone()[0] == 0


@pytest.fixture
def both_tenants_data(world) -> dict[str, Message]:
    made = {}
    for key, tenant, user in (("a", world.tenant_a, world.alice), ("b", world.tenant_b, world.charlie)):
        with tenant_context(tenant.pk):
            conversation = Conversation.objects.create(tenant=tenant, user=user, title=f"{key} plans")
            made[key] = Message.objects.create(tenant=tenant, conversation=conversation, role="user", content=key)
        audit_record(tenant_id=tenant.pk, actor=actor_for(user_id=user.pk, role="employee"),
                     action="conversation.create", target_id=conversation.pk)
    return made


def counts() -> dict[str, int]:
    out = {}
    with connection.cursor() as cursor:
        for table in tenant_tables():
            cursor.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 - names from the catalogue
            out[table] = cursor.fetchone()[0]
    return out


def test_it_reads_no_rows_without_a_tenant_and_only_that_tenants_rows_with_one(world, both_tenants_data) -> None:
    assert set(counts().values()) == {0}  # fails closed
    with tenant_context(world.tenant_a.pk):
        seen = counts()
        with connection.cursor() as cursor:
            for table in tenant_tables():
                cursor.execute(f"SELECT count(*) FROM {table} WHERE tenant_id IS DISTINCT FROM %s",  # noqa: S608
                               [world.tenant_a.pk])
                assert cursor.fetchone()[0] == 0, f"{table} shows another tenant's rows"
        assert seen["chat_message"] == 1 and seen["chat_conversation"] == 1 and seen["audit_auditevent"] == 1
        assert list(Message.objects.values_list("content", flat=True)) == ["a"]


def test_it_refuses_to_write_a_row_into_another_tenant(world) -> None:
    from django.db import DatabaseError, transaction

    with tenant_context(world.tenant_a.pk), pytest.raises(DatabaseError, match="row-level security"):
        with transaction.atomic():
            Conversation.objects.create(tenant=world.tenant_b, user=world.alice, title="smuggled")
    with tenant_context(world.tenant_b.pk):
        assert not Conversation.objects.exists()


def test_it_never_leaks_the_tenant_across_1000_interleaved_requests_with_failures(world, settings) -> None:
    """Requests of two tenants alternate on one persistent connection; some views fail midway."""
    settings.CONN_MAX_AGE = 600
    factory = RequestFactory()
    observed: list[tuple[int, str, str]] = []

    class Boom(Exception):
        pass

    def view(request: object) -> HttpResponse:
        acting = str(request.tenant.pk)  # type: ignore[attr-defined]
        observed.append((len(observed), acting, current_tenant_setting()))
        visible = set(Conversation.objects.values_list("tenant_id", flat=True))
        assert visible <= {request.tenant.pk}  # type: ignore[attr-defined]
        if rng.random() < 0.2:
            raise Boom("the view failed halfway")
        return HttpResponse("ok")

    rng = random.Random(4)
    for tenant, user in ((world.tenant_a, world.alice), (world.tenant_b, world.charlie)):
        with tenant_context(tenant.pk):
            Conversation.objects.create(tenant=tenant, user=user)
    middleware = TenantMiddleware(view)
    users = [world.alice, world.charlie]
    failures = 0
    for i in range(1000):
        request = factory.get("/")
        request.user = rng.choice(users)
        request.session = {}  # type: ignore[assignment]
        try:
            middleware(request)
        except Boom:
            failures += 1
        # Between requests, on the same connection, no tenant is set.
        assert current_tenant_setting() == "", f"request {i} left its tenant on the connection"
    assert failures > 100 and len(observed) == 1000
    assert all(acting == setting for _, acting, setting in observed)
