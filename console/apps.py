from __future__ import annotations

from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The tenant owner's console: members, roles, settings and quotas, and the audited admin.

    It sits above `tenants` (the tenancy core: tenants, memberships, row-level security, access)
    and `audit`: every change it makes is audited, and tenancy itself must not depend on audit.
    """

    name = "console"
