from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from chat.models import Conversation
from tenants.rls import tenant_context


@pytest.fixture
def conversation(world) -> Conversation:
    with tenant_context(world.tenant_a.pk):
        return Conversation.objects.create(tenant=world.tenant_a, user=world.alice, title="Budget questions")


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_it_shows_the_conversation_list_and_the_chat(world, conversation) -> None:
    response = client_for(world.alice).get(reverse("chat:conversation_detail", args=[conversation.pk]))
    assert response.status_code == 200
    body = response.content.decode()
    assert "Budget questions" in body and f"/ws/chat/{conversation.pk}/" in body
    assert "Content-Security-Policy" in response.headers


def test_it_redirects_home_to_the_latest_conversation(world, conversation) -> None:
    response = client_for(world.alice).get(reverse("chat:home"))
    assert response.status_code == 302 and response["Location"] == reverse("chat:conversation_detail", args=[conversation.pk])


def test_it_creates_renames_and_deletes_with_audit(world) -> None:
    client = client_for(world.alice)
    response = client.post(reverse("chat:conversation_create"))
    with tenant_context(world.tenant_a.pk):
        conversation = Conversation.objects.get(user=world.alice)
    assert response.status_code == 302 and conversation.tenant == world.tenant_a
    response = client.post(reverse("chat:conversation_rename", args=[conversation.pk]), {"title": "Travel"},
                           HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "Travel" in response.content.decode()
    response = client.post(reverse("chat:conversation_rename", args=[conversation.pk]), {"title": "  "},
                           HTTP_HX_REQUEST="true")
    assert response.status_code == 400 and "cannot be empty" in response.content.decode()
    response = client.post(reverse("chat:conversation_delete", args=[conversation.pk]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and response.headers["HX-Redirect"] == reverse("chat:home")
    with tenant_context(world.tenant_a.pk):
        assert not Conversation.objects.exists()
        actions = AuditEvent.objects.filter(action__startswith="conversation.").order_by("seq")
        assert list(actions.values_list("action", flat=True)) == [
            "conversation.create", "conversation.rename", "conversation.delete",
        ]


@pytest.mark.parametrize("name,method", [
    ("chat:conversation_detail", "get"), ("chat:conversation_rename", "post"), ("chat:conversation_delete", "post"),
])
def test_it_gives_charlie_404_for_another_tenants_conversation(world, conversation, name, method) -> None:
    response = getattr(client_for(world.charlie), method)(reverse(name, args=[conversation.pk]), {"title": "x"})
    assert response.status_code == 404
    assert "Budget questions" not in response.content.decode()
    with tenant_context(world.tenant_a.pk):
        conversation.refresh_from_db()
    assert conversation.title == "Budget questions"


def test_it_sends_anonymous_users_to_log_in(world, conversation) -> None:
    response = Client().get(reverse("chat:conversation_detail", args=[conversation.pk]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_it_logs_in_and_out(world) -> None:
    client = Client()
    response = client.post(reverse("login"), {"username": "alice", "password": world.password})
    assert response.status_code == 302
    assert client.get(reverse("chat:home")).status_code == 200
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert client.get(reverse("chat:home")).status_code == 302


def test_it_lets_owners_but_not_employees_into_django_admin(world) -> None:
    world.bob.is_staff = True
    world.bob.save()
    assert client_for(world.bob).get("/admin/").status_code == 200
    world.alice.is_staff = True  # staff flag alone is not enough: the role must be owner
    world.alice.save()
    assert client_for(world.alice).get("/admin/").status_code == 302


def test_it_reports_health(db: None) -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200 and response.json()["database"] == "ok"
