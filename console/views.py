"""The tenant owner's console: members, roles, settings and quotas, and switching tenants.

Each view is named as its URL (`console:<view name>`) and, where it performs one, as the service
it calls.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from audit.services import actor_from_request, audit_record
from chat import quotas
from console import services
from console.forms import TenantSettingsForm, UserCreateForm
from console.selectors import membership_get_in_tenant, membership_list
from tenants.access import membership_get_exact
from tenants.decorators import role_required
from tenants.http import TenantRequest
from tenants.middleware import SESSION_TENANT_KEY
from tenants.models import Membership, Role


def _render_console(request: TenantRequest, *, user_form: UserCreateForm | None = None,
                    settings_form: TenantSettingsForm | None = None, error: str = "",
                    status: int = 200) -> HttpResponse:
    """The console page; a refused change renders it again with the form's errors or `error`."""
    today = quotas.messages_today_by_user(tenant=request.tenant)
    members = list(membership_list(tenant=request.tenant))
    for member in members:
        member.messages_today = today.get(member.user_id, 0)  # type: ignore[attr-defined]
    return render(request, "console/console.html", {
        "members": members,
        "roles": Role.choices,
        "user_form": user_form or UserCreateForm(),
        "settings_form": settings_form or TenantSettingsForm.for_tenant(request.tenant),
        "tokens": quotas.tokens_this_month(tenant=request.tenant),
        "error": error,
    }, status=status)


@require_GET
@login_required
@role_required(Role.OWNER)
def home(request: TenantRequest) -> HttpResponse:
    return _render_console(request)


@require_POST
@login_required
@role_required(Role.OWNER)
def user_create(request: TenantRequest) -> HttpResponse:
    form = UserCreateForm(request.POST)
    if not form.is_valid():
        return _render_console(request, user_form=form, status=400)
    try:
        services.user_create(tenant=request.tenant, username=form.cleaned_data["username"],
                             password=form.cleaned_data["password"], role=form.cleaned_data["role"],
                             actor=actor_from_request(request))
    except services.MembershipError as exc:
        form.add_error(None, str(exc))
        return _render_console(request, user_form=form, status=400)
    return redirect("console:home")


def _apply_membership_change(request: TenantRequest, membership_id: int,
                             change: Callable[[Membership], object]) -> HttpResponse:
    """Applies one console change to a member of this tenant; a refused change shows its reason."""
    membership = membership_get_in_tenant(tenant=request.tenant, membership_id=membership_id)
    try:
        change(membership)
    except services.MembershipError as exc:
        return _render_console(request, error=str(exc), status=400)
    return redirect("console:home")


@require_POST
@login_required
@role_required(Role.OWNER)
def membership_change_role(request: TenantRequest, membership_id: int) -> HttpResponse:
    return _apply_membership_change(request, membership_id, lambda membership: services.membership_change_role(
        membership=membership, role=request.POST.get("role", ""), actor=actor_from_request(request)))


@require_POST
@login_required
@role_required(Role.OWNER)
def membership_set_active(request: TenantRequest, membership_id: int) -> HttpResponse:
    return _apply_membership_change(request, membership_id, lambda membership: services.membership_set_active(
        membership=membership, active=request.POST.get("active") == "1", actor=actor_from_request(request)))


@require_POST
@login_required
@role_required(Role.OWNER)
def tenant_settings_update(request: TenantRequest) -> HttpResponse:
    form = TenantSettingsForm(request.POST)
    if not form.is_valid():
        return _render_console(request, settings_form=form, status=400)
    try:
        services.tenant_settings_update(tenant=request.tenant, values=form.cleaned_data,
                                        actor=actor_from_request(request))
    except services.SettingsError as exc:
        form.add_error(None, str(exc))
        return _render_console(request, settings_form=form, status=400)
    return redirect("console:home")


@require_POST
@login_required
def tenant_switch(request: TenantRequest) -> HttpResponse:
    """Makes another of the user's tenants the active one (their memberships are visible to them)."""
    try:
        target = membership_get_exact(request.user, int(request.POST.get("tenant_id", "")))
    except ValueError:
        target = None
    if target is None:
        raise Http404("No such tenant.")
    request.session[SESSION_TENANT_KEY] = target.tenant_id
    audit_record(tenant_id=target.tenant_id, actor=actor_from_request(request), action="tenant.switch",
                 target_type="tenant", target_id=target.tenant_id,
                 payload={"from": request.tenant.pk if request.tenant else None})
    return redirect("chat:home")
