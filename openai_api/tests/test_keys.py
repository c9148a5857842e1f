"""The tenant owner's API keys page: create (shown once, only the hash stored), revoke, who may."""

from __future__ import annotations

import hashlib
import re

import pytest
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from openai_api.models import ApiKey
from tenants.models import Membership, Role
from tenants.rls import tenant_context


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def keys_of(tenant) -> list[ApiKey]:
    with tenant_context(tenant.pk):
        return list(ApiKey.objects.filter(tenant=tenant).order_by("pk"))


def events(tenant, action: str) -> list[AuditEvent]:
    with tenant_context(tenant.pk):
        return list(AuditEvent.objects.filter(action=action).order_by("seq"))


def create(client: Client, user, name: str = "CI bot"):
    return client.post(reverse("apikeys:api_key_create"), {"name": name, "user": user.pk})


def test_it_shows_a_new_key_once_and_stores_only_its_hash_and_prefix(world) -> None:
    owner = logged_in(world.bob)
    response = create(owner, world.alice)
    assert response.status_code == 201
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    shown = re.search(r'id="new-api-key-value">(dsw-[^<]+)<', page)
    assert shown is not None
    plaintext = shown.group(1)
    [key] = keys_of(world.tenant_a)
    assert key.key_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    assert key.prefix == plaintext[:12] and len(plaintext) > 40
    assert key.user_id == world.alice.pk and key.created_by_id == world.bob.pk
    assert plaintext not in {key.name, key.prefix, key.key_hash}
    listing = owner.get(reverse("apikeys:api_key_list")).content.decode()
    assert f'id="api-key-{key.pk}"' in listing and key.prefix in listing and plaintext not in listing
    [event] = events(world.tenant_a, "api_key.create")
    assert event.actor_id == world.bob.pk and event.target_id == str(key.pk)
    assert event.payload["user_id"] == world.alice.pk and plaintext not in str(event.payload)


def test_it_links_the_keys_page_from_the_console(world) -> None:
    assert reverse("apikeys:api_key_list") in logged_in(world.bob).get(reverse("console:home")).content.decode()


def test_it_revokes_a_key_and_audits_it_once(world) -> None:
    owner = logged_in(world.bob)
    create(owner, world.bob)
    [key] = keys_of(world.tenant_a)
    for _ in range(2):  # a second click changes nothing
        assert owner.post(reverse("apikeys:api_key_revoke", args=[key.pk])).status_code == 302
    [key] = keys_of(world.tenant_a)
    assert key.revoked_at is not None
    assert len(events(world.tenant_a, "api_key.revoke")) == 1
    assert "revoked" in owner.get(reverse("apikeys:api_key_list")).content.decode()


def test_it_refuses_a_key_for_someone_outside_the_tenant_or_without_a_name(world) -> None:
    owner = logged_in(world.bob)
    assert create(owner, world.charlie).status_code == 400
    assert create(owner, world.alice, name="   ").status_code == 400
    with tenant_context(world.tenant_a.pk):
        Membership.objects.filter(tenant=world.tenant_a, user=world.alice).update(is_active=False)
    assert create(owner, world.alice).status_code == 400
    assert keys_of(world.tenant_a) == []


@pytest.mark.parametrize("who", ["alice", "erin", "dora"])
def test_it_gives_403_to_everyone_but_owners(world, who) -> None:
    logged_in(world.bob).post(reverse("apikeys:api_key_create"), {"name": "k", "user": world.alice.pk})
    [key] = keys_of(world.tenant_a)
    client = logged_in(getattr(world, who))
    assert client.get(reverse("apikeys:api_key_list")).status_code == 403
    assert create(client, getattr(world, who)).status_code == 403
    assert client.post(reverse("apikeys:api_key_revoke", args=[key.pk])).status_code == 403
    assert len(keys_of(world.tenant_a)) == 1 and keys_of(world.tenant_a)[0].revoked_at is None


def test_it_gives_charlie_404_on_tenant_a_keys_even_as_tenant_b_owner(world) -> None:
    logged_in(world.bob).post(reverse("apikeys:api_key_create"), {"name": "A-SECRET-KEY-NAME", "user": world.alice.pk})
    [key] = keys_of(world.tenant_a)
    with tenant_context(world.tenant_b.pk):
        Membership.objects.filter(tenant=world.tenant_b, user=world.charlie).update(role=Role.OWNER)
    charlie = logged_in(world.charlie)
    assert charlie.post(reverse("apikeys:api_key_revoke", args=[key.pk])).status_code == 404
    listing = charlie.get(reverse("apikeys:api_key_list"))
    assert listing.status_code == 200 and "A-SECRET-KEY-NAME" not in listing.content.decode()
    assert keys_of(world.tenant_a)[0].revoked_at is None
