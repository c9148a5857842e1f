"""Who may act in which tenant. Views and consumers call these before they touch tenant data."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User

from tenants.models import Membership, Tenant


def membership_get_active(
    user: User | AnonymousUser, tenant_id: int | None = None
) -> Membership | None:
    """The user's active membership: the requested tenant if they belong to it, else their first."""
    if not user.is_authenticated or not user.is_active:
        return None
    memberships = Membership.objects.select_related("tenant").filter(user=user, is_active=True)
    if tenant_id is not None:
        chosen = memberships.filter(tenant_id=tenant_id).first()
        if chosen is not None:
            return chosen
    return memberships.order_by("id").first()


def membership_get_exact(user: User | AnonymousUser, tenant_id: int) -> Membership | None:
    """The user's active membership in exactly this tenant, or None (no fallback to another)."""
    if not user.is_authenticated:
        return None
    return Membership.objects.select_related("tenant").filter(user=user, is_active=True,
                                                              tenant_id=tenant_id).first()


def tenants_for_user(user: User) -> list[Tenant]:
    return [m.tenant for m in Membership.objects.select_related("tenant").filter(user=user, is_active=True)]
