"""The chat WebSocket's URL (Channels' counterpart of urls.py; deepseek_web/asgi.py mounts it)."""

from __future__ import annotations

from typing import Any

from django.urls import path

from chat.consumers import ChatConsumer

# Any: URLRouter takes these patterns, while django-stubs types path() for HTTP views only (Channels
# reuses Django's path() for ASGI applications).
websocket_urlpatterns: list[Any] = [
    path("ws/chat/<int:conversation_id>/", ChatConsumer.as_asgi()),  # type: ignore[arg-type]
]
