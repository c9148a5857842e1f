"""Every error under the APIs answers in that API's own JSON format, never an HTML page.

Django answers some refusals before a view runs, or around it: an unknown path (404), a method
Django's own decorators refuse (405), a request it cannot read (400), and, with DEBUG on, the
technical 404 and 500 pages. A client of `/v1/` expects OpenAI's error object, a client of
`/api/` DRF's `{"detail": ...}`; this middleware rewrites those answers, keeping their status and
the headers that tell the client what to do next. Answers that are already JSON (the views' own
errors) pass unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

from django.http import HttpRequest, JsonResponse
from django.http.response import HttpResponseBase

from openai_api.wire import error_body

OPENAI_PREFIX = "/v1"
REST_PREFIX = "/api"
# What a client needs from the original answer: allowed methods, how to authenticate, when to retry.
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")
_PATH_SHOWN = 200


def _message(request: HttpRequest, status: int) -> str:
    path = request.path[:_PATH_SHOWN]
    if status == 404:
        return f"Invalid URL ({request.method} {path})."
    if status == 405:
        return f"The method {request.method} is not allowed on {path}."
    if status >= 500:
        return "The server failed while handling this request; it has been logged."
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return f"{phrase}: the request to {path} was refused."


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _is_json(response: HttpResponseBase) -> bool:
    return response.get("Content-Type", "").split(";")[0].strip().endswith("json")


class ApiErrorMiddleware:
    """First in MIDDLEWARE, so it sees the answers of every other middleware and of URL resolution."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        status = response.status_code
        openai = _under(request.path_info, OPENAI_PREFIX)
        if status < 400 or _is_json(response) or not (openai or _under(request.path_info, REST_PREFIX)):
            return response
        message = _message(request, status)
        if openai:
            kind = "server_error" if status >= 500 else "invalid_request_error"
            rewritten = JsonResponse(error_body(message, type=kind), status=status)
        else:
            rewritten = JsonResponse({"detail": message}, status=status)
        for header in _KEPT_HEADERS:
            if header in response:
                rewritten[header] = response[header]
        return rewritten
