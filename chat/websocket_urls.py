"""The chat WebSocket's URL (Channels' counterpart of urls.py; deepseek_web/asgi.py mounts it)."""

from __future__ import annotations

from django.urls import path

from chat.consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/chat/<int:conversation_id>/", ChatConsumer.as_asgi()),
]
