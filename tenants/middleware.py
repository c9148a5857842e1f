from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from tenants.access import membership_get_active

SESSION_TENANT_KEY = "active_tenant_id"


class TenantMiddleware:
    """Resolves the active tenant for the request: explicit in the session, else the first membership."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        membership = membership_get_active(request.user, request.session.get(SESSION_TENANT_KEY))
        request.membership = membership  # type: ignore[attr-defined]
        request.tenant = membership.tenant if membership else None  # type: ignore[attr-defined]
        return self.get_response(request)
