"""Retention: only a verified, expired prefix is pruned, only by the privileged job, and nobody but the
platform can shorten a trail. The pruning and the platform write on the owner role's own connection, so
these tests commit their data (`transaction=True`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import DatabaseError, connection, transaction
from django.test import Client, override_settings
from django.urls import reverse

from audit.chain import checkpoint_mac, verify_chain
from audit.models import AuditCheckpoint, AuditEvent, AuditHead, AuditRetention
from audit.selectors import retention_days
from audit.services import (
    SYSTEM,
    RetentionError,
    actor_for,
    audit_prune_expired,
    audit_record,
    audit_retention_set,
)
from audit.tasks import prune_expired
from audit.tests.attacker import superuser_connection, triggers_off
from tenants.rls import tenant_context

pytestmark = pytest.mark.django_db(transaction=True)


def record(world, n: int) -> None:
    for i in range(n):
        audit_record(tenant_id=world.tenant_a.pk, actor=actor_for(user_id=world.alice.pk, role="employee"),
                     action="message.submit", target_id=i)


@pytest.fixture
def expire_everything(world) -> Iterator[None]:
    """The platform sets tenant A's retention to 0 days (its floor lowered for the test): everything
    already recorded has expired."""
    with override_settings(AUDIT_MIN_RETENTION_DAYS=0):
        audit_retention_set(chain=world.tenant_a.pk, days=0, actor=SYSTEM)
    yield


def test_it_keeps_events_inside_the_retention_period(world) -> None:
    record(world, 5)
    assert retention_days(world.tenant_a.pk) == 180
    assert audit_prune_expired(chain=world.tenant_a.pk) == 0
    with tenant_context(world.tenant_a.pk):
        assert AuditEvent.objects.filter(tenant=world.tenant_a).count() == 5


def test_it_prunes_an_expired_prefix_and_the_chain_still_verifies(world) -> None:
    record(world, 5)
    audit_record(tenant_id=world.tenant_b.pk, actor=actor_for(user_id=world.charlie.pk, role="employee"),
                 action="message.submit")
    with override_settings(AUDIT_MIN_RETENTION_DAYS=0):
        audit_retention_set(chain=world.tenant_a.pk, days=0, actor=SYSTEM)  # the 6th event of A's chain

    assert prune_expired() == 6
    with tenant_context(world.tenant_a.pk):
        remaining = list(AuditEvent.objects.filter(tenant=world.tenant_a))
    assert [e.action for e in remaining] == ["audit.prune"] and remaining[0].seq == 7
    assert remaining[0].payload["removed"] == 6 and remaining[0].payload["upto_seq"] == 6
    checkpoint = AuditCheckpoint.objects.get(chain=world.tenant_a.pk)
    assert (checkpoint.seq, checkpoint.pruned) == (6, 6)
    report = verify_chain(world.tenant_a.pk)
    assert report.ok and report.verified_upto == 7
    with tenant_context(world.tenant_b.pk):
        assert AuditEvent.objects.filter(tenant=world.tenant_b).count() == 1  # other tenants untouched


def test_it_prunes_only_the_verified_part_of_a_broken_chain(world, expire_everything) -> None:
    record(world, 6)  # events 2..7 (1 is the platform's retention change)
    with superuser_connection() as attacker, triggers_off(attacker) as cursor:  # an attacker edits event 5
        cursor.execute("UPDATE audit_auditevent SET target_id = 'x' WHERE tenant_id = %s AND seq = 5",
                       [world.tenant_a.pk])

    assert audit_prune_expired(chain=world.tenant_a.pk) == 4
    report = verify_chain(world.tenant_a.pk)
    assert report.broken is not None and (report.broken.kind, report.broken.seq) == ("edited", 5)
    with tenant_context(world.tenant_a.pk):
        assert AuditEvent.objects.filter(tenant=world.tenant_a, seq=5).exists()  # the evidence stays


# --- findings of the attack (issue 12): each failed before its fix ------------------------------

def test_it_refuses_the_app_role_a_shorter_retention_and_the_prune_function(world) -> None:
    """As dsw_app: setting the retention to 0 and calling audit_prune with the head's hash and any MAC
    erased a whole trail."""
    record(world, 3)
    with tenant_context(world.tenant_a.pk):
        head = AuditHead.objects.get(chain=world.tenant_a.pk)
    with pytest.raises(DatabaseError, match="permission denied"), transaction.atomic(), \
            connection.cursor() as cursor:
        cursor.execute("INSERT INTO audit_auditretention (chain, days, updated_at) VALUES (%s, 0, now())",
                       [world.tenant_a.pk])
    with pytest.raises(DatabaseError, match="permission denied"), transaction.atomic(), \
            connection.cursor() as cursor:
        cursor.execute("SELECT audit_prune(%s, %s, %s, %s)", [world.tenant_a.pk, head.seq, head.hash,
                                                              checkpoint_mac(world.tenant_a.pk, head.seq, head.hash)])
    # The one write the app role has: lengthen its own tenant's retention, never shorten it.
    with tenant_context(world.tenant_a.pk), connection.cursor() as cursor:
        cursor.execute("SELECT audit_retention_lengthen(%s, %s)", [world.tenant_a.pk, 1])
        assert cursor.fetchone()[0] == 180
    with pytest.raises(DatabaseError, match="not the current tenant"), tenant_context(world.tenant_a.pk), \
            connection.cursor() as cursor:
        cursor.execute("SELECT audit_retention_lengthen(%s, %s)", [world.tenant_b.pk, 400])
    assert retention_days(world.tenant_b.pk) == 180
    with tenant_context(world.tenant_a.pk):
        assert AuditEvent.objects.filter(tenant=world.tenant_a).count() == 3
    assert verify_chain(world.tenant_a.pk).ok


def test_it_lets_an_owner_only_lengthen_the_retention(world) -> None:
    """An owner set the retention to 1 day, and the daily prune then erased their own history."""
    owner = Client()
    owner.force_login(world.bob)
    settings_url = reverse("console:tenant_settings_update")
    quotas = {"quota_messages_per_user_day": 200, "quota_tokens_per_month": 2_000_000}
    response = owner.post(settings_url, {"audit_retention_days": 1, **quotas})
    assert response.status_code == 400 and "can only be lengthened" in response.content.decode()
    assert retention_days(world.tenant_a.pk) == 180
    assert owner.post(settings_url, {"audit_retention_days": 400, **quotas}).status_code == 302
    assert retention_days(world.tenant_a.pk) == 400
    assert AuditRetention.objects.get(chain=world.tenant_a.pk).days == 400


def test_it_holds_the_platform_to_its_floor(world) -> None:
    with pytest.raises(RetentionError, match="floor"):
        audit_retention_set(chain=world.tenant_a.pk, days=30, actor=SYSTEM)
    assert retention_days(world.tenant_a.pk) == 180


def test_it_refuses_a_head_that_moves_back(world) -> None:
    record(world, 3)
    with pytest.raises(DatabaseError, match="only moves forward"), transaction.atomic(), \
            connection.cursor() as cursor:
        cursor.execute("UPDATE audit_audithead SET seq = seq - 1 WHERE chain = %s", [world.tenant_a.pk])


def test_it_catches_the_newest_events_removed_and_an_old_head_written_back(world) -> None:
    """Truncating the newest events and writing the old head back went undetected, even with a
    secret key: the remaining chain and the old head are all authentic."""
    from audit.tasks import verify_chains

    record(world, 3)
    with tenant_context(world.tenant_a.pk):
        old_head = AuditHead.objects.get(chain=world.tenant_a.pk)
    record(world, 2)
    assert verify_chains() == 0  # anchors heads 5 of A outside the database
    with superuser_connection() as attacker, triggers_off(attacker) as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE tenant_id = %s AND seq > 3", [world.tenant_a.pk])
        cursor.execute("UPDATE audit_audithead SET seq = %s, hash = %s, mac = %s WHERE chain = %s",
                       [old_head.seq, old_head.hash, old_head.mac, world.tenant_a.pk])
    report = verify_chain(world.tenant_a.pk)
    assert report.broken is not None and report.broken.kind == "deleted" and "4..5" in report.broken.detail

    # Written again from there, the chain verifies on its own, but not against the anchor.
    record(world, 3)
    report = verify_chain(world.tenant_a.pk)
    assert report.broken is not None and report.broken.kind == "deleted" and report.broken.seq == 5

