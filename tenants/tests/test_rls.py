"""Row-level security is the backstop: the database itself refuses other tenants' rows."""

from __future__ import annotations

import random
from typing import Any

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
            cursor.execute(f"SELECT count(*) FROM {table}")
            out[table] = cursor.fetchone()[0]
    return out


def test_it_reads_no_rows_without_a_tenant_and_only_that_tenants_rows_with_one(world, both_tenants_data) -> None:
    assert set(counts().values()) == {0}  # fails closed
    with tenant_context(world.tenant_a.pk):
        seen = counts()
        with connection.cursor() as cursor:
            for table in tenant_tables():
                cursor.execute(f"SELECT count(*) FROM {table} WHERE tenant_id IS DISTINCT FROM %s",
                               [world.tenant_a.pk])
                assert cursor.fetchone()[0] == 0, f"{table} shows another tenant's rows"
        assert seen["chat_message"] == 1 and seen["chat_conversation"] == 1 and seen["audit_auditevent"] == 1
        assert list(Message.objects.values_list("content", flat=True)) == ["a"]


def test_it_refuses_to_write_a_row_into_another_tenant(world) -> None:
    from django.db import DatabaseError, transaction

    with tenant_context(world.tenant_a.pk), pytest.raises(DatabaseError, match="row-level security"), \
            transaction.atomic():
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


@pytest.mark.django_db(transaction=True)
def test_it_keeps_tasks_of_two_tenants_apart_on_one_reused_connection(world, use_model, tiny_model_dir, settings,
                                                                       tmp_path) -> None:
    """Turns of A and B alternate through the real Celery task (eagerly, on this thread's
    persistent connection); every fifth runs into a missing model and fails midway."""
    from chat import services
    from chat.tasks import generate_reply

    settings.CONN_MAX_AGE = 600
    use_model(tiny_model_dir, CHAT_MAX_NEW_TOKENS=4)
    replies = []
    for i in range(20):
        tenant, user = (world.tenant_a, world.alice) if i % 2 == 0 else (world.tenant_b, world.charlie)
        with tenant_context(tenant.pk, user.pk):
            conversation = Conversation.objects.create(tenant=tenant, user=user)
            _, reply = services.message_submit(conversation=conversation, text=f"question {i}",
                                               actor=actor_for(user_id=user.pk, role="employee"))
        if i % 5 == 4:
            use_model(str(tmp_path / "missing"))
        generate_reply.apply(kwargs={"tenant_id": tenant.pk, "message_id": reply.pk})
        if i % 5 == 4:
            use_model(tiny_model_dir, CHAT_MAX_NEW_TOKENS=4)
        assert current_tenant_setting() == "", f"turn {i} left its tenant on the connection"
        replies.append((tenant.pk, reply.pk, "failed" if i % 5 == 4 else "done"))
    for tenant_id, reply_id, status in replies:
        other = world.tenant_b.pk if tenant_id == world.tenant_a.pk else world.tenant_a.pk
        with tenant_context(tenant_id):
            assert Message.objects.get(pk=reply_id).status == status
        with tenant_context(other):
            assert not Message.objects.filter(pk=reply_id).exists()


@pytest.mark.django_db(transaction=True)
async def test_it_keeps_consumer_calls_of_two_tenants_apart(world, settings) -> None:
    """Two sockets of two tenants take turns on the consumers' shared database thread; bad frames
    and refused messages fail midway between good ones."""
    from channels.db import database_sync_to_async
    from channels.testing import WebsocketCommunicator
    from django.test import Client

    from deepseek_web.asgi import application

    settings.CONN_MAX_AGE = 600

    def open_conversation(tenant: Any, user: Any) -> tuple[int, bytes]:
        with tenant_context(tenant.pk):
            conversation = Conversation.objects.create(tenant=tenant, user=user)
        client = Client()
        client.force_login(user)
        return conversation.pk, f"sessionid={client.cookies['sessionid'].value}".encode()

    sockets = []
    for tenant, user in ((world.tenant_a, world.alice), (world.tenant_b, world.charlie)):
        conversation_id, cookie = await database_sync_to_async(open_conversation)(tenant, user)
        communicator = WebsocketCommunicator(application, f"/ws/chat/{conversation_id}/",
                                             headers=[(b"origin", b"http://localhost"), (b"cookie", cookie)])
        assert (await communicator.connect(timeout=5))[0]
        sockets.append((tenant.pk, communicator))

    async def next_frame(communicator: Any) -> dict[str, Any]:
        # A waiting turn's position (chat.dispatch) may arrive between the answers to frames.
        while (frame := await communicator.receive_json_from(timeout=5))["type"] == "queued":
            pass
        return frame

    expected = {world.tenant_a.pk: 0, world.tenant_b.pk: 0}
    for i in range(30):
        tenant_id, communicator = sockets[i % 2]
        if i % 3 == 0:
            await communicator.send_to(text_data="{broken")
            assert (await next_frame(communicator))["type"] == "error"
        elif i % 3 == 1:
            await communicator.send_json_to({"type": "submit", "text": "   "})
            assert (await next_frame(communicator))["type"] == "error"
        else:
            await communicator.send_json_to({"type": "submit", "text": f"from {tenant_id}: {i}"})
            frame = await next_frame(communicator)
            assert frame["type"] == "submitted"
            expected[tenant_id] += 2  # question and pending reply
    for _, communicator in sockets:
        await communicator.disconnect()

    def visible(tenant_id: int) -> tuple[list[str], set[int]]:
        with tenant_context(tenant_id):
            questions = list(Message.objects.filter(role="user").values_list("content", flat=True))
            owners = set(Message.objects.values_list("tenant_id", flat=True))
            return questions, owners

    for tenant_id, count in expected.items():
        questions, owners = await database_sync_to_async(visible)(tenant_id)
        assert len(questions) == count // 2 and owners == {tenant_id}
        assert all(q.startswith(f"from {tenant_id}:") for q in questions)
