from __future__ import annotations

from django.contrib.auth.models import User
from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails

from tenants.models import Membership, Tenant


class TenantRequest(HttpRequest):
    """A request past login_required and tenant_required: user, tenant and role are known."""

    user: User
    tenant: Tenant
    membership: Membership
    htmx: HtmxDetails
