"""The product's URLs plus a view that fails under each API, for the error-format tests: the
product has no view that fails on purpose."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path

from deepseek_web.urls import urlpatterns as product_urlpatterns


def failing(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("a bug in a view")


urlpatterns = [
    path("api/v1/failing/", failing),
    path("v1/failing", failing),
    *product_urlpatterns,
]
