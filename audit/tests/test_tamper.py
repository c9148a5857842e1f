"""Tamper detection: random edits, deletions, insertions, reorders and tail truncations, each made
as the database superuser with triggers off (as an attacker with full database access would), on
its own connection. Each case is committed, verified by the application, then undone from a copy
of the chain taken at the start. Verification must find every one and name the first bad position."""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from audit.chain import verify_chain
from audit.models import AuditEvent
from audit.services import actor_for, audit_record
from audit.tests.attacker import superuser_connection, triggers_off
from tenants.rls import tenant_context

# Committed data: the attacker's connection cannot see the rows of an open test transaction.
pytestmark = pytest.mark.django_db(transaction=True)

CHAIN_LENGTH = 24
CASES = 240
ACTIONS = ["conversation.create", "conversation.rename", "message.submit", "auth.login", "audit.view"]
UNIQUE_SEQ = "audit_unique_chain_seq"


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


@dataclass
class Attacker:
    conn: psycopg.Connection[Any]
    unique_seq: str  # the definition of the constraint that some cases drop


@pytest.fixture
def attacker(chain) -> Iterator[Attacker]:
    """The superuser's connection, holding a copy of the chain (a temporary table) to undo each case."""
    with superuser_connection() as conn:
        conn.execute("CREATE TEMP TABLE chain_copy AS SELECT * FROM audit_auditevent WHERE tenant_id = %s", [chain])
        row = conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s",
                           [UNIQUE_SEQ]).fetchone()
        assert row is not None
        yield Attacker(conn, row[0])


def restore(attacker: Attacker, chain: int) -> None:
    """Puts the chain back as it was before the case, constraint included."""
    with triggers_off(attacker.conn) as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE tenant_id = %s", [chain])
        cursor.execute("INSERT INTO audit_auditevent SELECT * FROM chain_copy")
        cursor.execute("SELECT 1 FROM pg_constraint WHERE conname = %s", [UNIQUE_SEQ])
        if cursor.fetchone() is None:  # the case dropped it
            cursor.execute(sql.SQL("ALTER TABLE audit_auditevent ADD CONSTRAINT {} {}").format(
                sql.Identifier(UNIQUE_SEQ), sql.SQL(attacker.unique_seq)))


def _row(chain: int, seq: int) -> AuditEvent:
    with tenant_context(chain):
        return AuditEvent.objects.get(tenant_id=chain, seq=seq)


def _template(chain: int) -> AuditEvent:
    with tenant_context(chain):
        template = AuditEvent.objects.filter(tenant_id=chain).order_by("seq").first()
    assert template is not None
    return template


def _forge(cursor: psycopg.Cursor[Any], template: AuditEvent, chain: int, seq: int, prev_hash: str) -> None:
    cursor.execute(
        "INSERT INTO audit_auditevent (tenant_id, seq, occurred_at, actor_id, actor_name, actor_role, source_ip,"
        " user_agent, action, category, target_type, target_id, outcome, payload, trace_id, prev_hash, hash)"
        " VALUES (%s, %s, %s, %s, 'mallory', 'owner', NULL, '', 'conversation.delete', 'database', 'conversation',"
        " '1', 'success', %s, '', %s, %s)",
        [chain, seq, template.occurred_at, template.actor_id, Jsonb({"forged": True}), prev_hash,
         secrets.token_hex(32)],
    )


def _drop_unique_seq(cursor: psycopg.Cursor[Any]) -> None:
    cursor.execute(sql.SQL("ALTER TABLE audit_auditevent DROP CONSTRAINT {}").format(sql.Identifier(UNIQUE_SEQ)))


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


def tamper(rng: random.Random, chain: int, conn: psycopg.Connection[Any]) -> tuple[str, int, str]:
    """Applies and commits one random tamper; returns (expected kind, expected first bad position, description).

    Everything the attacker reads comes first: the application's connection would wait on the
    attacker's ALTER TABLE lock otherwise."""
    n = CHAIN_LENGTH
    kind = rng.choice(["edit", "delete", "truncate", "insert_tail", "insert_shift", "insert_duplicate", "reorder"])
    if kind == "edit":
        k, field = rng.randint(1, n), rng.choice(sorted(EDITS))
        value = EDITS[field](_row(chain, k))
        with triggers_off(conn) as cursor:
            cursor.execute(sql.SQL("UPDATE audit_auditevent SET {} = %s WHERE tenant_id = %s AND seq = %s").format(
                sql.Identifier(field)), [Jsonb(value) if field == "payload" else value, chain, k])
        return "edited", k, f"edit {field} of {k}"
    if kind == "delete":
        k = rng.randint(1, n - 1)
        with triggers_off(conn) as cursor:
            cursor.execute("DELETE FROM audit_auditevent WHERE tenant_id = %s AND seq = %s", [chain, k])
        return "deleted", k, f"delete {k}"
    if kind == "truncate":
        k = rng.randint(1, n)
        with triggers_off(conn) as cursor:
            cursor.execute("DELETE FROM audit_auditevent WHERE tenant_id = %s AND seq >= %s", [chain, k])
        return "deleted", k, f"truncate from {k}"
    template = _template(chain)
    if kind == "insert_tail":
        last = _row(chain, n).hash
        with triggers_off(conn) as cursor:
            _forge(cursor, template, chain, n + 1, last)
        return "inserted", n + 1, "append a forged event"
    if kind == "insert_shift":
        k = rng.randint(1, n)
        prev = _row(chain, k - 1).hash if k > 1 else "0" * 64
        with triggers_off(conn) as cursor:
            _drop_unique_seq(cursor)
            cursor.execute("UPDATE audit_auditevent SET seq = seq + 1 WHERE tenant_id = %s AND seq >= %s", [chain, k])
            _forge(cursor, template, chain, k, prev)
        return "inserted", k, f"insert at {k}, renumbering the rest"
    if kind == "insert_duplicate":
        k = rng.randint(1, n)
        prev = _row(chain, k).prev_hash
        with triggers_off(conn) as cursor:
            _drop_unique_seq(cursor)
            _forge(cursor, template, chain, k, prev)
        return "inserted", k, f"insert a second event {k}"
    k, j = sorted(rng.sample(range(1, n + 1), 2))
    with triggers_off(conn) as cursor:
        _drop_unique_seq(cursor)
        cursor.execute("UPDATE audit_auditevent SET seq = CASE seq WHEN %s THEN %s ELSE %s END"
                       " WHERE tenant_id = %s AND seq IN (%s, %s)", [k, j, k, chain, k, j])
    return "reordered", k, f"swap {k} and {j}"


def test_it_finds_every_random_tamper_and_names_the_first_bad_event(chain, attacker) -> None:
    rng = random.Random(20261129)
    seen: dict[str, int] = {}
    for case in range(CASES):
        try:
            expected_kind, expected_seq, description = tamper(rng, chain, attacker.conn)
            report = verify_chain(chain)
        finally:
            restore(attacker, chain)
        assert report.broken is not None, f"case {case}: {description} went unnoticed"
        assert (report.broken.kind, report.broken.seq) == (expected_kind, expected_seq), (
            f"case {case}: {description}: {report.describe()}"
        )
        seen[expected_kind] = seen.get(expected_kind, 0) + 1
    assert set(seen) == {"edited", "deleted", "inserted", "reordered"}
    assert verify_chain(chain).ok  # every case was undone


def test_it_reports_a_break_through_the_command_with_a_nonzero_exit(chain, attacker) -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    call_command("audit_verify", "--tenant", str(chain))
    try:
        with triggers_off(attacker.conn) as cursor:
            cursor.execute("UPDATE audit_auditevent SET action = 'auth.logout' WHERE tenant_id = %s AND seq = 5",
                           [chain])
        with pytest.raises(CommandError) as caught:
            call_command("audit_verify", "--tenant", str(chain))
    finally:
        restore(attacker, chain)
    assert caught.value.returncode == 1
