"""The tenant owner's console: members, roles, settings and quotas, and switching tenants."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from audit.services import actor_from_request, audit_record
from tenants import quotas
from tenants.decorators import role_required
from tenants.forms import MemberAddForm, TenantSettingsForm
from tenants.http import TenantRequest
from tenants.middleware import SESSION_TENANT_KEY
from tenants.models import Membership, Role
from tenants.services import (
    MembershipError,
    member_create,
    membership_change_role,
    membership_set_active,
    tenant_settings_update,
)


def membership_get_in_tenant(request: TenantRequest, membership_id: int) -> Membership:
    try:
        return Membership.objects.select_related("user").get(tenant=request.tenant, pk=membership_id)
    except Membership.DoesNotExist:
        raise Http404("No such member.") from None


def _console(request: TenantRequest, *, add_form: MemberAddForm | None = None,
             settings_form: TenantSettingsForm | None = None, error: str = "", status: int = 200) -> HttpResponse:
    today = quotas.messages_today_by_user(tenant=request.tenant)
    members = list(Membership.objects.select_related("user").filter(tenant=request.tenant).order_by("user__username"))
    for member in members:
        member.messages_today = today.get(member.user_id, 0)  # type: ignore[attr-defined]
    return render(request, "tenants/console.html", {
        "members": members,
        "roles": Role.choices,
        "add_form": add_form or MemberAddForm(),
        "settings_form": settings_form or TenantSettingsForm.for_tenant(request.tenant),
        "tokens": quotas.tokens_this_month(tenant=request.tenant),
        "error": error,
    }, status=status)


@require_GET
@login_required
@role_required(Role.OWNER)
def console(request: TenantRequest) -> HttpResponse:
    return _console(request)


@require_POST
@login_required
@role_required(Role.OWNER)
def member_add(request: TenantRequest) -> HttpResponse:
    form = MemberAddForm(request.POST)
    if not form.is_valid():
        return _console(request, add_form=form, status=400)
    try:
        member_create(tenant=request.tenant, username=form.cleaned_data["username"],
                      password=form.cleaned_data["password"], role=form.cleaned_data["role"],
                      actor=actor_from_request(request))
    except MembershipError as exc:
        form.add_error(None, str(exc))
        return _console(request, add_form=form, status=400)
    return redirect("tenants:console")


def _member_change(request: TenantRequest, membership_id: int,
                   change: Callable[[Membership], object]) -> HttpResponse:
    """Applies one console change to a member of this tenant; a refused change shows its reason."""
    membership = membership_get_in_tenant(request, membership_id)
    try:
        change(membership)
    except MembershipError as exc:
        return _console(request, error=str(exc), status=400)
    return redirect("tenants:console")


@require_POST
@login_required
@role_required(Role.OWNER)
def member_role(request: TenantRequest, membership_id: int) -> HttpResponse:
    return _member_change(request, membership_id, lambda membership: membership_change_role(
        membership=membership, role=request.POST.get("role", ""), actor=actor_from_request(request)))


@require_POST
@login_required
@role_required(Role.OWNER)
def member_active(request: TenantRequest, membership_id: int) -> HttpResponse:
    return _member_change(request, membership_id, lambda membership: membership_set_active(
        membership=membership, active=request.POST.get("active") == "1", actor=actor_from_request(request)))


@require_POST
@login_required
@role_required(Role.OWNER)
def settings_update(request: TenantRequest) -> HttpResponse:
    form = TenantSettingsForm(request.POST)
    if not form.is_valid():
        return _console(request, settings_form=form, status=400)
    tenant_settings_update(tenant=request.tenant, values=form.cleaned_data, actor=actor_from_request(request))
    return redirect("tenants:console")


@require_POST
@login_required
def tenant_switch(request: TenantRequest) -> HttpResponse:
    """Makes another of the user's tenants the active one (their memberships are visible to them)."""
    try:
        target = Membership.objects.select_related("tenant").get(
            user=request.user, is_active=True, tenant_id=int(request.POST.get("tenant_id", "")))
    except (Membership.DoesNotExist, ValueError):
        raise Http404("No such tenant.") from None
    request.session[SESSION_TENANT_KEY] = target.tenant_id
    audit_record(tenant_id=target.tenant_id, actor=actor_from_request(request), action="tenant.switch",
                 target_type="tenant", target_id=target.tenant_id,
                 payload={"from": request.tenant.pk if request.tenant else None})
    return redirect("chat:home")
