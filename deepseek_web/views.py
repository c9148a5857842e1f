"""Project-wide views: the health check and the REST API's OpenAPI schema."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.common import no_append_slash
from django.views.decorators.http import require_GET
from drf_spectacular.views import SpectacularAPIView

from deepseek_web.redis_client import sync_client


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - health reports, never raises
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        sync_client().ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return JsonResponse({"status": "ok" if healthy else "degraded", **checks}, status=200 if healthy else 503)


# The REST API's OpenAPI 3 schema (drf-spectacular), for signed-in users only (SPECTACULAR_SETTINGS).
api_schema = no_append_slash(SpectacularAPIView.as_view())
