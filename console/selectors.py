"""The console's reads: a tenant's members, for the owner's page and its changes."""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from tenants.models import Membership, Tenant


def membership_list(*, tenant: Tenant) -> QuerySet[Membership]:
    return Membership.objects.select_related("user").filter(tenant=tenant).order_by("user__username")


def membership_get_in_tenant(*, tenant: Tenant, membership_id: int) -> Membership:
    """A member of `tenant`, or Http404 (also for another tenant's membership id)."""
    try:
        return Membership.objects.select_related("user").get(tenant=tenant, pk=membership_id)
    except Membership.DoesNotExist:
        raise Http404("No such member.") from None
