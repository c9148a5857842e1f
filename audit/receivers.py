"""Login, failed login and logout: Django's auth signals are the only hook for these."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.http import HttpRequest

from audit.models import Outcome
from audit.services import actor_for, audit_record
from tenants.access import membership_get_active
from tenants.rls import tenant_context


def _actor(request: HttpRequest | None, user: Any, role: str, name: str) -> Any:
    meta = request.META if request is not None else {}
    return actor_for(
        user_id=user.pk if user is not None else None, role=role, name=name,
        ip=meta.get("REMOTE_ADDR"), user_agent=meta.get("HTTP_USER_AGENT", ""),
        trace_id=request.headers.get("X-Request-ID", "") if request is not None else "",
    )


def _tenant_and_role(user: Any) -> tuple[int | None, str]:
    membership = None
    if user is not None:
        with tenant_context(None, user.pk):  # the user's own memberships, in any tenant
            membership = membership_get_active(user)
    if membership is None:
        return None, "platform" if user is not None and user.is_superuser else "none"
    return membership.tenant_id, membership.role


def on_logged_in(sender: Any, request: HttpRequest, user: Any, **kwargs: Any) -> None:
    tenant_id, role = _tenant_and_role(user)
    audit_record(tenant_id=tenant_id, actor=_actor(request, user, role, user.get_username()),
                 action="auth.login", target_type="user", target_id=user.pk)


def on_logged_out(sender: Any, request: HttpRequest, user: Any, **kwargs: Any) -> None:
    if user is None:
        return
    tenant_id, role = _tenant_and_role(user)
    audit_record(tenant_id=tenant_id, actor=_actor(request, user, role, user.get_username()),
                 action="auth.logout", target_type="user", target_id=user.pk)


def on_login_failed(sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None,
                    **kwargs: Any) -> None:
    username = str(credentials.get("username", ""))[:150]
    user = get_user_model().objects.filter(username=username).first()
    # A known user's tenant sees attempts on its accounts; unknown names go to the platform chain.
    tenant_id, role = _tenant_and_role(user) if user is not None else (None, "anonymous")
    audit_record(tenant_id=tenant_id, actor=_actor(request, None, role, username),
                 action="auth.login_failed", target_type="user", target_id=user.pk if user else "",
                 outcome=Outcome.FAILURE, payload={"username": username})
