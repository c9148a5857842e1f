from __future__ import annotations

from django.http import HttpRequest

from tenants.access import tenants_for_user


def tenant(request: HttpRequest) -> dict[str, object]:
    user = getattr(request, "user", None)
    return {
        "tenant": getattr(request, "tenant", None),
        "membership": getattr(request, "membership", None),
        # Lazy: only pages that render the switcher query it.
        "user_tenants": (lambda: tenants_for_user(user)) if user is not None and user.is_authenticated else [],
    }
