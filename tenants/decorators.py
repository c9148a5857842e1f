from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def tenant_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The user must have an active membership; otherwise a clear 403 page."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if getattr(request, "tenant", None) is None:
            return render(request, "no_tenant.html", status=403)
        return view(request, *args, **kwargs)

    return wrapper
