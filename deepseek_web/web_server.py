"""daphne with request bodies capped before anything parses them: `python -m deepseek_web.web_server`.

Twisted reads a whole request body before daphne hands it on, and by default parses a
multipart/form-data body into `request.args` as well (about 12x the body's size in memory, before
login). Here the form parsing is off, a Content-Length above the limit is refused with a 413 as soon
as the headers are in, and a chunked body is counted and refused once it passes the limit. Bodies
are spooled to a temporary file past 100 kB (as Twisted does for a known length), so memory stays
well under twice the limit whatever is sent.

The limit is `REQUEST_MAX_BODY_BYTES`, or `REQUEST_UPLOAD_MAX_BODY_BYTES` for the paths matching
`REQUEST_UPLOAD_PATHS` (document uploads). The arguments are daphne's own.

Why hand-written: daphne has no body limit (only Django's, which runs after Twisted has read and
parsed the body), and the hooks it would need are Twisted's request methods, so this subclasses
daphne's request class and plugs it in through daphne's `server_class`.
"""

from __future__ import annotations

import io
import json
import re
import sys
import tempfile
from typing import IO, Any

from daphne.cli import CommandLineInterface
from daphne.http_protocol import HTTPFactory, WebRequest
from daphne.server import Server
from django.conf import settings

# After a 413, read and drop what the client still sends for this long before closing: closing a
# socket with unread data sends a reset, which can destroy the 413 before the client reads it.
LINGER_S = 2.0
# Twisted keeps bodies up to this size in memory and spools larger ones to a file.
IN_MEMORY_BODY_BYTES = 100_000


def body_limit(path: str) -> int:
    """The most bytes a request body to `path` may have."""
    if any(re.match(pattern, path) for pattern in settings.REQUEST_UPLOAD_PATHS):
        return int(settings.REQUEST_UPLOAD_MAX_BODY_BYTES)
    return int(settings.REQUEST_MAX_BODY_BYTES)


def too_large_response(path: str, limit: int) -> bytes:
    """A complete HTTP/1.1 413 response; in OpenAI's error format under /v1/."""
    message = f"The request body is larger than the {limit} bytes this server accepts."
    if path.startswith("/v1/"):
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                     "code": "request_too_large", "param": None}}).encode()
        content_type = b"application/json"
    else:
        body = message.encode()
        content_type = b"text/plain; charset=utf-8"
    return (b"HTTP/1.1 413 Content Too Large\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


class CappedRequest(WebRequest):  # type: ignore[misc]  # daphne ships no types
    """daphne's request with Twisted's form parsing off and the body capped as it arrives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Twisted's multipart parsing is what costs 12x the body; Django parses the body itself.
        kwargs["parsePOSTFormSubmission"] = False
        self._received = 0
        self._limit = 0
        self._refused = False
        super().__init__(*args, **kwargs)

    def gotLength(self, length: int | None) -> None:  # Twisted's name
        # The request line is parsed, its path is on the channel; `self.path` comes only at the end.
        path = bytes(getattr(self.channel, "_path", b"/")).split(b"?", 1)[0].decode("latin-1")
        self._path_seen = path
        self._limit = body_limit(path)
        if length is not None and length > self._limit:
            self._refuse()
            self.content: IO[bytes] = io.BytesIO()
            return
        if length is not None and length <= IN_MEMORY_BODY_BYTES:
            self.content = io.BytesIO()
        else:
            # Unknown length (chunked): spool to disk like a large known one, not into memory.
            self.content = tempfile.TemporaryFile()  # noqa: SIM115  # Twisted closes it with the request

    def handleContentChunk(self, data: bytes) -> None:  # Twisted's name
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._limit:
            self._refuse()
            return
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:  # Twisted's name
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self._refused = True
        self.content = io.BytesIO()  # drops what was spooled so far
        transport = self.channel.transport
        transport.write(too_large_response(self._path_seen, self._limit))
        # Half-close: the client sees the whole 413 and the end of the stream; what it still sends
        # is read and dropped (handleContentChunk) until it closes, or until LINGER_S has passed.
        if hasattr(transport, "loseWriteConnection"):
            transport.loseWriteConnection()
        self.channel.callLater(LINGER_S, transport.abortConnection)  # the channel's reactor.callLater


class CappedHTTPFactory(HTTPFactory):  # type: ignore[misc]  # daphne ships no types
    def buildProtocol(self, addr: Any) -> Any:  # Twisted's name
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = CappedRequest
        return protocol


class CappedServer(Server):  # type: ignore[misc]  # daphne ships no types
    """daphne's server with our factory: `Server.run` builds `HTTPFactory(self)` itself and listens
    with it at once, so the attribute it assigns is replaced as it is set."""

    @property
    def http_factory(self) -> CappedHTTPFactory:
        return self._capped_http_factory

    @http_factory.setter
    def http_factory(self, _factory: Any) -> None:
        self._capped_http_factory = CappedHTTPFactory(self)


class CappedCommandLineInterface(CommandLineInterface):  # type: ignore[misc]  # daphne ships no types
    server_class = CappedServer


def main(argv: list[str] | None = None) -> None:
    CappedCommandLineInterface().run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
