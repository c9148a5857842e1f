from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import Http404

from knowledge.selectors import knowledge_bases_for_member
from openai_api import wire
from openai_api.access import ApiCaller
from openai_api.models import ApiKey
from tenants.models import Tenant


def models_for_caller(caller: ApiCaller) -> list[wire.ModelEntry]:
    """The chat model, then one model per knowledge base the key's user may chat with now."""
    tenant = caller.membership.tenant
    entries = [wire.ModelEntry(id=wire.BASE_MODEL, created=int(tenant.created_at.timestamp()),
                               owned_by=tenant.slug, name="DeepSeek Web chat model")]
    with caller.context():
        entries += [
            wire.ModelEntry(id=wire.kb_model_id(kb.pk), created=int(kb.created_at.timestamp()),
                            owned_by=tenant.slug, name=f"{kb.name} (knowledge base)")
            for kb in knowledge_bases_for_member(caller.membership)
        ]
    return entries


def api_key_list(*, tenant: Tenant) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(tenant=tenant).select_related("user", "created_by").order_by("-created_at", "-id")


def api_key_get_in_tenant(tenant: Tenant, api_key_id: int) -> ApiKey:
    try:
        return ApiKey.objects.get(tenant=tenant, pk=api_key_id)
    except ApiKey.DoesNotExist:
        raise Http404("No such API key.") from None


def api_key_users(*, tenant: Tenant) -> QuerySet[User]:
    """Whom a new key may act as: the tenant's active members."""
    return (User.objects.filter(memberships__tenant=tenant, memberships__is_active=True, is_active=True)
            .order_by("username").distinct())
