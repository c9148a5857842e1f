"""The tenant owner's API keys page: create a key (shown once), revoke one. Views are named as their URLs."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from audit.services import actor_from_request
from openai_api import selectors, services, wire
from openai_api.forms import ApiKeyCreateForm
from openai_api.services import ApiKeyError, CreatedApiKey
from tenants.decorators import role_required
from tenants.http import TenantRequest
from tenants.models import Role


def _page(request: TenantRequest, *, form: ApiKeyCreateForm | None = None, created: CreatedApiKey | None = None,
          status: int = 200) -> HttpResponse:
    return render(request, "openai_api/keys.html", {
        "api_keys": selectors.api_key_list(tenant=request.tenant),
        "form": form or ApiKeyCreateForm(tenant=request.tenant, initial={"user": request.user.pk}),
        "created": created,
        "base_url": request.build_absolute_uri("/v1"),
        "model": wire.BASE_MODEL,
        "max_tokens": settings.CHAT_MAX_NEW_TOKENS,
    }, status=status)


@require_GET
@login_required
@role_required(Role.OWNER)
def api_key_list(request: TenantRequest) -> HttpResponse:
    return _page(request)


@never_cache  # the response shows the new key, once: no cache may keep it
@require_POST
@login_required
@role_required(Role.OWNER)
def api_key_create(request: TenantRequest) -> HttpResponse:
    form = ApiKeyCreateForm(request.POST, tenant=request.tenant)
    if not form.is_valid():
        return _page(request, form=form, status=400)
    try:
        created = services.api_key_create(tenant=request.tenant, name=form.cleaned_data["name"],
                                          user=form.cleaned_data["user"], created_by=request.user,
                                          actor=actor_from_request(request))
    except ApiKeyError as exc:
        form.add_error(None, str(exc))
        return _page(request, form=form, status=400)
    return _page(request, created=created, status=201)


@require_POST
@login_required
@role_required(Role.OWNER)
def api_key_revoke(request: TenantRequest, api_key_id: int) -> HttpResponse:
    key = selectors.api_key_get_in_tenant(request.tenant, api_key_id)
    services.api_key_revoke(key=key, actor=actor_from_request(request))
    return redirect("apikeys:api_key_list")
