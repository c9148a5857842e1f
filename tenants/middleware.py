from __future__ import annotations

from collections.abc import Callable

from django.db import transaction
from django.http import HttpRequest, HttpResponse

from tenants.access import membership_get_active
from tenants.rls import tenant_context

SESSION_TENANT_KEY = "active_tenant_id"
# The OpenAI-compatible API authenticates each request by its bearer key, not the session, and
# opens a short tenant context per step itself: an answer streamed for a minute must not hold one
# transaction open, and its turn is queued only when the step that stored it commits.
API_PREFIX = "/v1/"


class TenantMiddleware:
    """Resolves the active tenant and runs the rest of the request inside its database context.

    The whole request is one transaction (like ATOMIC_REQUESTS, but also covering this lookup)
    in which `app.tenant_id` is the active tenant, so row-level security sees only its rows.
    Responses that stream after the transaction (exports) set their own context per batch.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith(API_PREFIX):
            request.membership = None  # type: ignore[attr-defined]
            request.tenant = None  # type: ignore[attr-defined]
            return self.get_response(request)
        user = request.user
        user_id = user.pk if user.is_authenticated else None
        # First as the user alone: their memberships in every tenant are visible, nothing else.
        with tenant_context(None, user_id):
            membership = membership_get_active(user, request.session.get(SESSION_TENANT_KEY))
            request.membership = membership  # type: ignore[attr-defined]
            request.tenant = membership.tenant if membership else None  # type: ignore[attr-defined]
            with tenant_context(membership.tenant_id if membership else None, user_id):
                response = self.get_response(request)
                if response.status_code >= 500:
                    # The view failed (Django turned the exception into this response): undo its writes.
                    transaction.set_rollback(True)
        return response
