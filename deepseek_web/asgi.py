"""The ASGI application daphne serves: Django for HTTP, the chat consumers for WebSockets."""

from __future__ import annotations

import os
from typing import Any, cast

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deepseek_web.settings")
# Django must be set up before the consumers (and their models) are imported.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware  # noqa: E402

from chat.websocket_urls import websocket_urlpatterns  # noqa: E402
from deepseek_web.websocket_admission import HandshakeAdmission  # noqa: E402
from deepseek_web.websocket_auth import ConcurrentAuthMiddlewareStack  # noqa: E402
from deepseek_web.websocket_origin import SameOriginValidator  # noqa: E402

router = ProtocolTypeRouter(
    {
        "http": ASGIStaticFilesHandler(django_asgi_app) if settings.SERVE_STATIC else django_asgi_app,
        # Before authentication: a socket from another origin, or one over the handshakes this
        # process sets up at once, is refused before anything runs.
        "websocket": SameOriginValidator(HandshakeAdmission(
            ConcurrentAuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
            limit=settings.WEBSOCKET_HANDSHAKES_MAX)),
    }
)

# Behind a reverse proxy the client's address is in X-Forwarded-For (django-axes locks out by it),
# believed only from TRUSTED_PROXIES: uvicorn's middleware takes the last address that is not a
# trusted proxy. daphne's own --proxy-headers believes the header from any client. (The cast: channels'
# and uvicorn's ASGI type names differ for the same protocol.)
application: Any = (
    ProxyHeadersMiddleware(cast(Any, router), trusted_hosts=settings.TRUSTED_PROXIES) if settings.TRUSTED_PROXIES else router
)
