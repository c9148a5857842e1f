"""Shared fixtures: Alice and Bob in tenant A, Charlie in tenant B, on the real PostgreSQL and Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

# Playwright's sync API runs its own event loop in the test thread; Django's ORM guard would
# otherwise refuse the test's own (synchronous) database calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

PASSWORD = "correct-horse-battery"


@dataclass
class World:
    tenant_a: object
    tenant_b: object
    alice: object
    bob: object
    charlie: object


@pytest.fixture(scope="session", autouse=True)
def _clean_test_redis() -> Iterator[None]:
    """Tests own Redis database DSW_REDIS_DB (1 under `./dsw test`); start and end it empty."""
    from django.conf import settings

    from chat.streams import sync_client

    assert not settings.REDIS_URL.endswith("db=0"), "tests must not use the run command's Redis database"
    client = sync_client()
    client.flushdb()
    yield
    client.flushdb()


@pytest.fixture
def world(db: None) -> World:
    from django.contrib.auth import get_user_model

    from tenants.models import Membership, Role, Tenant

    User = get_user_model()
    tenant_a = Tenant.objects.create(name="Tenant A", slug="tenant-a")
    tenant_b = Tenant.objects.create(name="Tenant B", slug="tenant-b")
    alice = User.objects.create_user("alice", password=PASSWORD)
    bob = User.objects.create_user("bob", password=PASSWORD)
    charlie = User.objects.create_user("charlie", password=PASSWORD)
    Membership.objects.create(tenant=tenant_a, user=alice, role=Role.EMPLOYEE)
    Membership.objects.create(tenant=tenant_a, user=bob, role=Role.OWNER)
    Membership.objects.create(tenant=tenant_b, user=charlie, role=Role.EMPLOYEE)
    return World(tenant_a, tenant_b, alice, bob, charlie)
