from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks


class InferenceConfig(AppConfig):
    name = "inference"

    def ready(self) -> None:
        checks.register(check_backends)


def check_backends(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Reports a malformed INFERENCE_BACKENDS at `manage.py check` or `migrate`, not on the first routed turn."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    from inference.routing import backend_configs

    try:
        backend_configs(settings.INFERENCE_BACKENDS)
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="inference.E001")]
    return []
