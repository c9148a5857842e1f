"""Tamper detection: random edits, deletions, insertions, reorders and tail truncations, each made
as the database superuser with triggers off (as an attacker with full database access would), on a
copy of the chain (a savepoint, rolled back after each case). Verification must find every one
and name the first bad position."""

from __future__ import annotations

import random
import secrets
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction

from audit.chain import verify_chain
from audit.models import AuditEvent
from audit.services import actor_for, audit_record

CHAIN_LENGTH = 24
CASES = 240
ACTIONS = ["conversation.create", "conversation.rename", "message.submit", "auth.login", "audit.view"]


@pytest.fixture
def chain(world) -> int:
    rng = random.Random(11)
    for i in range(CHAIN_LENGTH):
        audit_record(
            tenant_id=world.tenant_a.pk,
            actor=actor_for(user_id=world.alice.pk, role="employee", name="alice", ip=f"10.0.0.{i}",
                            user_agent="Mozilla/5.0"),
            action=rng.choice(ACTIONS), target_type="conversation", target_id=i, payload={"n": i, "note": "ok"},
        )
    assert verify_chain(world.tenant_a.pk).ok
    return world.tenant_a.pk


def _sql(statement: str, params: list[Any] | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])


def _row(chain: int, seq: int) -> AuditEvent:
    return AuditEvent.objects.get(tenant_id=chain, seq=seq)


def _forge(chain: int, seq: int, prev_hash: str) -> None:
    template = AuditEvent.objects.filter(tenant_id=chain).order_by("seq").first()
    assert template is not None
    AuditEvent.objects.create(
        tenant_id=chain, seq=seq, occurred_at=template.occurred_at, actor_id=template.actor_id,
        actor_name="mallory", actor_role="owner", action="conversation.delete", category="database",
        target_type="conversation", target_id="1", payload={"forged": True}, prev_hash=prev_hash,
        hash=secrets.token_hex(32),
    )


EDITS = {
    "action": lambda e: "auth.logout" if e.action != "auth.logout" else "auth.login",
    "actor_id": lambda e: (e.actor_id or 0) + 1,
    "actor_name": lambda e: e.actor_name + "x",
    "occurred_at": lambda e: e.occurred_at + timedelta(seconds=1),
    "target_id": lambda e: e.target_id + "0",
    "payload": lambda e: {**e.payload, "note": "changed"},
    "outcome": lambda e: "failure" if e.outcome == "success" else "success",
    "source_ip": lambda e: "192.0.2.1",
    "user_agent": lambda e: "curl/8",
    "prev_hash": lambda e: secrets.token_hex(32),
    "hash": lambda e: secrets.token_hex(32),
}


def tamper(rng: random.Random, chain: int) -> tuple[str, int, str]:
    """Applies one random tamper; returns (expected kind, expected first bad position, description)."""
    n = CHAIN_LENGTH
    kind = rng.choice(["edit", "delete", "truncate", "insert_tail", "insert_shift", "insert_duplicate", "reorder"])
    if kind == "edit":
        k, field = rng.randint(1, n), rng.choice(sorted(EDITS))
        AuditEvent.objects.filter(tenant_id=chain, seq=k).update(**{field: EDITS[field](_row(chain, k))})
        return "edited", k, f"edit {field} of {k}"
    if kind == "delete":
        k = rng.randint(1, n - 1)
        AuditEvent.objects.filter(tenant_id=chain, seq=k).delete()
        return "deleted", k, f"delete {k}"
    if kind == "truncate":
        k = rng.randint(1, n)
        AuditEvent.objects.filter(tenant_id=chain, seq__gte=k).delete()
        return "deleted", k, f"truncate from {k}"
    if kind == "insert_tail":
        _forge(chain, n + 1, _row(chain, n).hash)
        return "inserted", n + 1, "append a forged event"
    _sql("SET CONSTRAINTS ALL IMMEDIATE")  # ALTER TABLE refuses to run with deferred FK checks pending
    _sql("ALTER TABLE audit_auditevent DROP CONSTRAINT audit_unique_chain_seq")
    if kind == "insert_shift":
        k = rng.randint(1, n)
        prev = _row(chain, k - 1).hash if k > 1 else "0" * 64
        _sql("UPDATE audit_auditevent SET seq = seq + 1 WHERE tenant_id = %s AND seq >= %s", [chain, k])
        _forge(chain, k, prev)
        return "inserted", k, f"insert at {k}, renumbering the rest"
    if kind == "insert_duplicate":
        k = rng.randint(1, n)
        _forge(chain, k, _row(chain, k).prev_hash)
        return "inserted", k, f"insert a second event {k}"
    k, j = sorted(rng.sample(range(1, n + 1), 2))
    _sql("UPDATE audit_auditevent SET seq = CASE seq WHEN %s THEN %s ELSE %s END"
         " WHERE tenant_id = %s AND seq IN (%s, %s)", [k, j, k, chain, k, j])
    return "reordered", k, f"swap {k} and {j}"


def test_it_finds_every_random_tamper_and_names_the_first_bad_event(chain) -> None:
    rng = random.Random(20261129)
    seen: dict[str, int] = {}
    for case in range(CASES):
        with transaction.atomic():
            _sql("SET LOCAL session_replication_role = replica")  # triggers off: the attacker is superuser
            expected_kind, expected_seq, description = tamper(rng, chain)
            report = verify_chain(chain)
            transaction.set_rollback(True)
        assert report.broken is not None, f"case {case}: {description} went unnoticed"
        assert (report.broken.kind, report.broken.seq) == (expected_kind, expected_seq), (
            f"case {case}: {description}: {report.describe()}"
        )
        seen[expected_kind] = seen.get(expected_kind, 0) + 1
    assert set(seen) == {"edited", "deleted", "inserted", "reordered"}
    assert verify_chain(chain).ok  # every case was made on a copy


def test_it_reports_a_break_through_the_command_with_a_nonzero_exit(chain) -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    call_command("audit_verify", "--tenant", str(chain))
    with transaction.atomic():
        _sql("SET LOCAL session_replication_role = replica")
        AuditEvent.objects.filter(tenant_id=chain, seq=5).update(action="auth.logout")
        with pytest.raises(CommandError) as caught:
            call_command("audit_verify", "--tenant", str(chain))
        transaction.set_rollback(True)
    assert caught.value.returncode == 1
