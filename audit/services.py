"""audit_record: the one way every app writes an audit event, inside the caller's transaction."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from audit.models import AuditEvent, Outcome

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class Actor:
    user_id: int | None = None
    role: str = "system"
    ip: str | None = None
    user_agent: str = ""
    trace_id: str = ""


SYSTEM = Actor()


def event_hash(*, prev_hash: str, fields: dict[str, Any]) -> str:
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


@transaction.atomic
def audit_record(
    *,
    tenant_id: int,
    actor: Actor,
    action: str,
    target_type: str = "",
    target_id: str | int = "",
    outcome: str = Outcome.SUCCESS,
    payload: dict[str, Any] | None = None,
) -> AuditEvent:
    # A per-tenant transaction-scoped advisory lock serialises writers, so two concurrent events
    # can never both link to the same predecessor and fork the chain.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [7411, tenant_id])
    last = AuditEvent.objects.filter(tenant_id=tenant_id).order_by("-seq").values("seq", "hash").first()
    seq = (last["seq"] if last else 0) + 1
    prev_hash = last["hash"] if last else GENESIS_HASH
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "seq": seq,
        "occurred_at": timezone.now().isoformat(),
        "actor_id": actor.user_id,
        "actor_role": actor.role,
        "source_ip": actor.ip,
        "user_agent": actor.user_agent[:512],
        "action": action,
        "target_type": target_type,
        "target_id": str(target_id),
        "outcome": str(outcome),
        "payload": payload or {},
        "trace_id": actor.trace_id,
    }
    return AuditEvent.objects.create(
        **fields, prev_hash=prev_hash, hash=event_hash(prev_hash=prev_hash, fields=fields)
    )


def actor_for(
    *,
    user_id: int | None,
    role: str,
    ip: str | None = None,
    user_agent: str = "",
    trace_id: str = "",
) -> Actor:
    return Actor(user_id=user_id, role=role, ip=ip, user_agent=user_agent, trace_id=trace_id)


def actor_from_request(request: Any) -> Actor:
    membership = getattr(request, "membership", None)
    return actor_for(
        user_id=request.user.pk if request.user.is_authenticated else None,
        role=membership.role if membership else "anonymous",
        ip=request.META.get("REMOTE_ADDR"),
        user_agent=request.META.get("HTTP_USER_AGENT", ""),
        trace_id=request.headers.get("X-Request-ID", ""),
    )


def actor_from_scope(scope: dict[str, Any], role: str) -> Actor:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    client = scope.get("client") or (None, None)
    user = scope.get("user")
    return actor_for(
        user_id=user.pk if user is not None and user.is_authenticated else None,
        role=role,
        ip=client[0],
        user_agent=headers.get("user-agent", ""),
        trace_id=headers.get("x-request-id", ""),
    )
