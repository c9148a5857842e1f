"""The WebSocket origin check: a socket opens only from the page's own origin or a trusted one.

Browsers send cookies with a WebSocket handshake from any site, and the same-origin policy does
not apply to WebSockets: the Origin header is the only defence against cross-site WebSocket
hijacking. Channels' AllowedHostsOriginValidator compares the Origin's host with ALLOWED_HOSTS and
ignores the scheme and port, so another program on the same host (http://localhost:9000, a
different origin to the browser) could open a socket as the logged-in user. Here the Origin must
equal the request's own origin, scheme, host and port, with the host in ALLOWED_HOSTS, or match
CSRF_TRUSTED_ORIGINS, as Django's CSRF check allows for forms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import ParseResult, urlparse

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable
from channels.security.websocket import OriginValidator, WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

if TYPE_CHECKING:
    from channels.consumer import _ChannelScope as Scope  # the stubs' name for a WebSocket scope

# What Django allows when DEBUG is on and ALLOWED_HOSTS is empty (HttpRequest.get_host).
DEBUG_ALLOWED_HOSTS = [".localhost", "127.0.0.1", "[::1]"]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin1")
    return None


def _request_scheme(scope: Scope) -> str:
    """http or https, as the browser used it: wss in the scope, or a proxy that Django trusts.

    X-Forwarded-Proto counts only where settings trust it (SECURE_PROXY_SSL_HEADER, set by
    BEHIND_TLS_PROXY), the same rule as HttpRequest.is_secure for pages.
    """
    if scope.get("scheme") == "wss":
        return "https"
    proxy_header = settings.SECURE_PROXY_SSL_HEADER
    if proxy_header:
        name, secure_value = proxy_header
        header = name.removeprefix("HTTP_").lower().replace("_", "-").encode("latin1")
        value = _header(scope, header)
        if value is not None and value.split(",")[0].strip() == secure_value:
            return "https"
    return "http"


def _host_allowed(host: str) -> bool:
    """Whether ``host`` (host[:port], as in a Host header) passes ALLOWED_HOSTS, Django's own way."""
    domain, _ = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS or (DEBUG_ALLOWED_HOSTS if settings.DEBUG else [])
    return bool(domain) and validate_host(domain, allowed)


def _trusted_patterns() -> list[str]:
    # CSRF_TRUSTED_ORIGINS spells "any subdomain" `https://*.example.com`; Channels' patterns
    # spell it `https://.example.com`, with the same meaning.
    return [origin.replace("://*.", "://.", 1) for origin in settings.CSRF_TRUSTED_ORIGINS]


class SameOriginValidator(OriginValidator):
    """Channels' OriginValidator with the allowed origin taken from each request's Host header."""

    def __init__(self, application: Any) -> None:
        # No fixed list: the allowed origins depend on each request, and the trusted ones are read
        # per connection from settings.
        super().__init__(application, allowed_origins=[])
        self.inner = application  # self.application, typed as what it is: an ASGI 3 application

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("SameOriginValidator guards WebSocket connections only")
        if self.origin_allowed(scope):
            return await self.inner(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)

    def origin_allowed(self, scope: Scope) -> bool:
        raw_origin = _header(scope, b"origin")
        if raw_origin is None:
            return False
        origin = urlparse(raw_origin)
        if origin.hostname is None or origin.scheme not in {"http", "https"}:
            return False  # "null" (sandboxed frames, files) and anything that is no web origin
        try:
            if any(self.match_allowed_origin(origin, pattern) for pattern in _trusted_patterns()):
                return True
        except ValueError:  # "http://host:99999": urlparse's .port refuses it
            return False
        host = _header(scope, b"host")
        if host is None:
            # No browser opens a WebSocket without a Host header (HTTP/1.1 requires one, and
            # daphne's handshake refuses a request without it): this is an in-process client such
            # as Channels' WebsocketCommunicator. No request origin to compare with, so only the
            # host rule applies, as before.
            return _host_allowed(origin.netloc)
        if not _host_allowed(host):
            return False
        try:
            return self._same_origin(origin, urlparse(f"{_request_scheme(scope)}://{host}"))
        except ValueError:  # a port out of range in either: urlparse's .port refuses it
            return False

    def _same_origin(self, origin: ParseResult, request: ParseResult) -> bool:
        # Exact host equality, not is_same_domain: the request's own origin is no pattern.
        return (origin.scheme == request.scheme and origin.hostname == request.hostname
                and self.get_origin_port(origin) == self.get_origin_port(request))

