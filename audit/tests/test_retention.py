from __future__ import annotations

import pytest

from audit.chain import verify_chain
from audit.models import AuditCheckpoint, AuditEvent
from audit.services import actor_for, audit_prune_expired, audit_record
from audit.tasks import prune_expired
from audit.tests.attacker import superuser_connection, triggers_off
from tenants.rls import tenant_context


def record(world, n: int) -> None:
    for i in range(n):
        audit_record(tenant_id=world.tenant_a.pk, actor=actor_for(user_id=world.alice.pk, role="employee"),
                     action="message.submit", target_id=i)


def test_it_keeps_events_inside_the_retention_period(world) -> None:
    record(world, 5)
    assert world.tenant_a.audit_retention_days == 180
    assert audit_prune_expired(chain=world.tenant_a.pk) == 0
    with tenant_context(world.tenant_a.pk):
        assert AuditEvent.objects.filter(tenant=world.tenant_a).count() == 5


def test_it_prunes_an_expired_prefix_and_the_chain_still_verifies(world) -> None:
    record(world, 5)
    audit_record(tenant_id=world.tenant_b.pk, actor=actor_for(user_id=world.charlie.pk, role="employee"),
                 action="message.submit")
    world.tenant_a.audit_retention_days = 0  # everything already recorded has expired
    world.tenant_a.save(update_fields=["audit_retention_days"])

    assert prune_expired() == 5
    with tenant_context(world.tenant_a.pk):
        remaining = list(AuditEvent.objects.filter(tenant=world.tenant_a))
    assert [e.action for e in remaining] == ["audit.prune"] and remaining[0].seq == 6
    assert remaining[0].payload["removed"] == 5 and remaining[0].payload["upto_seq"] == 5
    checkpoint = AuditCheckpoint.objects.get(chain=world.tenant_a.pk)
    assert (checkpoint.seq, checkpoint.pruned) == (5, 5)
    report = verify_chain(world.tenant_a.pk)
    assert report.ok and report.verified_upto == 6
    with tenant_context(world.tenant_b.pk):
        assert AuditEvent.objects.filter(tenant=world.tenant_b).count() == 1  # other tenants untouched


# Committed data: the attacker (the superuser, on its own connection) edits what was committed.
@pytest.mark.django_db(transaction=True)
def test_it_prunes_only_the_verified_part_of_a_broken_chain(world) -> None:
    record(world, 6)
    with superuser_connection() as attacker, triggers_off(attacker) as cursor:  # an attacker edits event 4
        cursor.execute("UPDATE audit_auditevent SET target_id = 'x' WHERE tenant_id = %s AND seq = 4",
                       [world.tenant_a.pk])
    world.tenant_a.audit_retention_days = 0
    world.tenant_a.save(update_fields=["audit_retention_days"])

    assert audit_prune_expired(chain=world.tenant_a.pk) == 3
    report = verify_chain(world.tenant_a.pk)
    assert report.broken is not None and (report.broken.kind, report.broken.seq) == ("edited", 4)
    with tenant_context(world.tenant_a.pk):
        assert AuditEvent.objects.filter(tenant=world.tenant_a, seq=4).exists()  # the evidence stays
