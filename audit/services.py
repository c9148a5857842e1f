"""audit_record: the one way every app writes an audit event, inside the caller's transaction."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from audit.catalogue import CATALOGUE
from audit.chain import GENESIS_HASH, event_fields, event_hash, head_mac
from audit.models import PLATFORM_CHAIN, AuditEvent, Outcome
from audit.selectors import retention_days
from tenants.rls import owner_connection, tenant_context

# Advisory-lock namespace for chain writers (the second key is the chain).
_CHAIN_LOCK = 7411
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t", "\x1b": "\\x1b"}


@dataclass(frozen=True)
class Actor:
    user_id: int | None = None
    role: str = "system"
    name: str = ""
    ip: str | None = None
    user_agent: str = ""
    trace_id: str = ""


SYSTEM = Actor()


class UnknownAuditAction(ValueError):
    """An action missing from audit.catalogue: add it there, so it is documented and tested."""


def escape_control(value: str) -> str:
    """CR, LF, ANSI escapes and other control characters, stored as visible escapes.

    A user agent or title with "\\r\\n" or "\\x1b[2J" then cannot forge a line in a log file or
    repaint a terminal that displays an export.
    """
    return _CONTROL.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}"), value)


def _escape_all(value: Any) -> Any:
    if isinstance(value, str):
        return escape_control(value)
    if isinstance(value, dict):
        return {escape_control(str(k)): _escape_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escape_all(v) for v in value]
    return value


def _lock_chain(chain: int) -> None:
    """Takes the chain's writer lock (as audit_record does) until the transaction ends."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_CHAIN_LOCK, chain])


def audit_record(
    *,
    tenant_id: int | None,
    actor: Actor,
    action: str,
    target_type: str = "",
    target_id: str | int = "",
    outcome: str = Outcome.SUCCESS,
    payload: dict[str, Any] | None = None,
) -> AuditEvent:
    """Appends one event to the tenant's chain (tenant_id None: the platform chain).

    It runs inside the caller's transaction: if this write fails, the error reaches the caller
    and its transaction is rolled back, so the action fails with it.
    """
    entry = CATALOGUE.get(action)
    if entry is None:
        raise UnknownAuditAction(f"{action!r} is not in audit.catalogue.CATALOGUE")
    chain = tenant_id or PLATFORM_CHAIN
    # The audit writer may append to any chain (a login is recorded before a tenant is chosen), so
    # it sets the chain's tenant for its own statements and restores the caller's afterwards.
    with tenant_context(chain), connection.cursor() as cursor:
        # A per-chain advisory lock serialises writers for the rest of the transaction, so two
        # concurrent events can never link to the same predecessor and fork the chain.
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_CHAIN_LOCK, chain])
        cursor.execute("SELECT seq, hash FROM audit_audithead WHERE chain = %s", [chain])
        head = cursor.fetchone()
        event = AuditEvent(
            tenant_id=tenant_id,
            seq=(head[0] if head else 0) + 1,
            occurred_at=timezone.now(),
            actor_id=actor.user_id,
            actor_name=escape_control(actor.name)[:150],
            actor_role=escape_control(actor.role)[:32],
            source_ip=actor.ip or None,
            user_agent=escape_control(actor.user_agent)[:512],
            action=action,
            category=entry.category,
            target_type=escape_control(target_type)[:100],
            target_id=escape_control(str(target_id))[:200],
            outcome=str(outcome),
            payload=_escape_all(payload or {}),
            trace_id=escape_control(actor.trace_id)[:64],
            prev_hash=head[1] if head else GENESIS_HASH,
        )
        event.hash = event_hash(event.prev_hash, event_fields(event))
        event.save(force_insert=True)
        cursor.execute(
            "INSERT INTO audit_audithead (chain, seq, hash, mac) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (chain) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash, mac = EXCLUDED.mac",
            [chain, event.seq, event.hash, head_mac(chain, event.seq, event.hash)],
        )
    return event


def actor_for(
    *,
    user_id: int | None,
    role: str,
    name: str = "",
    ip: str | None = None,
    user_agent: str = "",
    trace_id: str = "",
) -> Actor:
    return Actor(user_id=user_id, role=role, name=name, ip=ip, user_agent=user_agent, trace_id=trace_id)


def actor_from_request(request: Any) -> Actor:
    membership = getattr(request, "membership", None)
    user = request.user
    return actor_for(
        user_id=user.pk if user.is_authenticated else None,
        role=membership.role if membership else ("platform" if user.is_superuser else "anonymous"),
        name=user.get_username() if user.is_authenticated else "",
        ip=request.META.get("REMOTE_ADDR"),
        user_agent=request.META.get("HTTP_USER_AGENT", ""),
        trace_id=request.headers.get("X-Request-ID", ""),
    )


def actor_from_scope(scope: Mapping[str, Any], role: str) -> Actor:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    client = scope.get("client") or (None, None)
    user = scope.get("user")
    authenticated = user is not None and user.is_authenticated
    return actor_for(
        user_id=user.pk if user is not None and authenticated else None,
        role=role,
        name=user.get_username() if user is not None and authenticated else "",
        ip=client[0],
        user_agent=headers.get("user-agent", ""),
        trace_id=headers.get("x-request-id", ""),
    )


class RetentionError(ValueError):
    """A retention change that is not allowed; the message says why."""


def audit_retention_lengthen(*, chain: int, days: int) -> int:
    """An owner's console lengthens the current tenant's retention; returns the days now kept.

    The database function writes only upwards and only for the current tenant: the application
    role cannot shorten a trail, whatever this code does. Refused here too, with a reason.
    """
    current = retention_days(chain)
    if days < current:
        raise RetentionError(f"The audit retention can only be lengthened: it is {current} days.")
    with tenant_context(chain), connection.cursor() as cursor:
        cursor.execute("SELECT audit_retention_lengthen(%s, %s)", [chain, days])
        return int(cursor.fetchone()[0])


def audit_retention_set(*, chain: int, days: int, actor: Actor) -> None:
    """The platform sets a chain's retention, never below AUDIT_MIN_RETENTION_DAYS. Privileged: it
    writes as the owner role, which the application role cannot do."""
    floor = settings.AUDIT_MIN_RETENTION_DAYS
    if days < floor:
        raise RetentionError(f"The platform's floor is {floor} days; {days} is below it.")
    previous = retention_days(chain)
    with owner_connection() as conn:
        conn.execute(
            "INSERT INTO audit_auditretention (chain, days, updated_at) VALUES (%s, %s, now())"
            " ON CONFLICT (chain) DO UPDATE SET days = EXCLUDED.days, updated_at = now()", [chain, days])
    audit_record(tenant_id=chain or None, actor=actor, action="audit.retention_set", target_type="audit_chain",
                 target_id=chain, payload={"from": previous, "to": days})


def audit_prune_expired(*, chain: int) -> int:
    """Removes the chain's expired prefix, but only as far as it verifies; returns events removed.

    A privileged job: it verifies the chain and makes the checkpoint MAC itself (with the key only
    the application holds), then deletes as the owner role through `audit_prune`, which the
    application role may not call. The database function re-checks the retention itself.
    """
    from datetime import timedelta

    from audit.chain import chain_events, checkpoint_mac, verify_chain

    days = retention_days(chain)
    cutoff = timezone.now() - timedelta(days=days)
    with tenant_context(chain):
        _lock_chain(chain)
        report = verify_chain(chain)
        events = chain_events(chain)
        first_recent = events.filter(occurred_at__gte=cutoff).order_by("seq").values_list("seq", flat=True).first()
        upto = min(report.verified_upto, (first_recent - 1) if first_recent is not None else report.verified_upto)
        last = events.filter(seq=upto).first() if upto > 0 else None
        if last is None or last.occurred_at >= cutoff:
            return 0
        with owner_connection(tenant_id=chain) as conn:
            row = conn.execute("SELECT audit_prune(%s, %s, %s, %s)",
                               [chain, upto, last.hash, checkpoint_mac(chain, upto, last.hash)]).fetchone()
        removed = int(row[0]) if row is not None else 0
        audit_record(
            tenant_id=chain or None, actor=SYSTEM, action="audit.prune", target_type="audit_chain", target_id=chain,
            payload={"removed": removed, "upto_seq": upto, "retention_days": days,
                     "verified": report.ok},
        )
    return removed
