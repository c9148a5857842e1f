from __future__ import annotations

from django.http import HttpRequest

from tenants.models import Role


def admin_site_permission(request: HttpRequest) -> bool:
    """Django admin is for platform superusers and for owners of the active tenant."""
    user = request.user
    if not (user.is_active and user.is_staff):
        return False
    if user.is_superuser:
        return True
    membership = getattr(request, "membership", None)
    return membership is not None and membership.role == Role.OWNER
