from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet

from audit.models import AuditEvent, AuditRetention
from tenants.models import Tenant


def audit_events(*, tenant: Tenant, filters: dict[str, Any]) -> QuerySet[AuditEvent]:
    """The tenant's events matching the reviewer's filters, newest first."""
    qs = AuditEvent.objects.filter(tenant=tenant)
    start: datetime | None = filters.get("start")
    end: datetime | None = filters.get("end")
    if start:
        qs = qs.filter(occurred_at__gte=start)
    if end:
        qs = qs.filter(occurred_at__lt=end)
    if actor := filters.get("actor"):
        condition = Q(actor_name__iexact=actor)
        if str(actor).isdigit():
            condition |= Q(actor_id=int(actor))
        qs = qs.filter(condition)
    if action := filters.get("action"):
        # "conversation" matches conversation.*; "conversation.delete" only itself.
        qs = qs.filter(Q(action=action) | Q(action__startswith=f"{action}."))
    if target := filters.get("target"):
        target_type, _, target_id = str(target).partition(":")
        qs = qs.filter(target_type=target_type, target_id=target_id) if target_id else qs.filter(target_type=target_type)
    if outcome := filters.get("outcome"):
        qs = qs.filter(outcome=outcome)
    return qs.order_by("-seq")


def audit_event_get(*, tenant: Tenant, event_id: int) -> AuditEvent:
    from django.http import Http404

    try:
        return AuditEvent.objects.get(tenant=tenant, pk=event_id)
    except AuditEvent.DoesNotExist:
        raise Http404("No such audit event.") from None


def retention_days(chain: int) -> int:
    """How many days the chain keeps its events (the platform's default when nobody changed it)."""
    days = AuditRetention.objects.filter(chain=chain).values_list("days", flat=True).first()
    return int(days) if days is not None else int(settings.AUDIT_DEFAULT_RETENTION_DAYS)
