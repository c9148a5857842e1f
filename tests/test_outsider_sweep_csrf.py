"""Outsider sweep, part 5: cross-site request forgery, and the chat WebSocket from another origin.

Every route and unsafe method that the walker finds and that the route accepts (the same request
with a valid token is not answered 405) is sent again from a signed-in browser without a CSRF
token, as a forged cross-site form would arrive: each must be refused by the CSRF check (Django's,
or DRF's for the session-authenticated REST API), never reach the view. The OpenAI-compatible /v1
is left out by design: it authenticates by a bearer key, which no other site's page can send, and
it reads no cookie (`CSRF_EXEMPT_BY_DESIGN`).

The chat WebSocket has no CSRF token; its defence against cross-site hijacking is the Origin check
(deepseek_web/websocket_origin.py, whose own tests cover its rules): here a signed-in user's socket
from each foreign origin is refused, and so is tenant B's conversation from the page's own origin;
on a user's own socket, frames that name tenant B's turn (resume, stop) are refused too.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import Client
from websockets.exceptions import InvalidHandshake
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from chat import streams
from chat.models import Conversation, Message
from tenants.models import Role
from tenants.rls import tenant_context
from tests.outsider_sweep import (
    UNSAFE_METHODS,
    Ledger,
    fill,
    form_body,
    is_csrf_refusal,
    off_the_event_loop,
    routes,
    run_token,
    send,
    session_client,
    tenantry_build,
)

pytestmark = pytest.mark.django_db(transaction=True)

CSRF_EXEMPT_BY_DESIGN = {
    "v1/models": "the OpenAI-compatible API: a bearer key, never a cookie",
    "v1/models/<str:model_id>": "the OpenAI-compatible API: a bearer key, never a cookie",
    "v1/chat/completions": "the OpenAI-compatible API: a bearer key, never a cookie",
}


@off_the_event_loop
def test_it_refuses_every_unsafe_request_without_a_csrf_token(transactional_db) -> None:
    a = tenantry_build(f"aside{run_token()}", ingest=False)
    ledger = Ledger("CSRF: every unsafe method a route accepts, signed in, without a token", "acceptances")
    found = routes()
    assert {r.route for r in found if r.bearer} == set(CSRF_EXEMPT_BY_DESIGN)
    # As the owner, whose role reaches the most views; the CSRF check runs before any role check.
    for role in (Role.OWNER,):
        forged, honest = session_client(a.users[role], csrf=False), session_client(a.users[role])
        for route in found:
            if route.route in CSRF_EXEMPT_BY_DESIGN:
                continue
            for url in (fill(route, a.ids) or [])[:1]:
                for method in route.methods:
                    if method not in UNSAFE_METHODS:
                        continue
                    attack = send(forged, method, url, data=form_body(a, ledger.attempts))
                    control = send(honest, method, url, data=form_body(a, ledger.attempts))
                    if control.status_code == 405:
                        continue  # the route does not take this method at all
                    ledger.record(attack)
                    if control.status_code >= 500:
                        ledger.findings.append(f"{role} {method.upper()} {url} with a token: {control.status_code}")
                    if is_csrf_refusal(control):
                        ledger.findings.append(f"{role} {method.upper()} {url}: refused with a valid token too")
                    if not is_csrf_refusal(attack):
                        ledger.findings.append(f"{role} {method.upper()} {url}: accepted without a CSRF token"
                                               f" ({attack.status_code})")
                    for client in (forged, honest):
                        if "_auth_user_id" not in client.session:  # the control may have logged out
                            client.force_login(a.users[role])
    ledger.extra["exempt_by_design"] = len(CSRF_EXEMPT_BY_DESIGN)
    ledger.report()
    assert ledger.attempts > 40
    assert not ledger.findings, "\n".join(ledger.findings)


# deepseek_web/tests/test_websocket_origin.py covers the rule case by case; these are an outsider's.
FOREIGN_ORIGINS = ["http://evil.example", "http://localhost.evil.example:{port}", "http://localhost:{other}",
                   "https://localhost:{port}", "null"]
CANARY = "bcanarywebsocketchunk"


def _socket(asgi_server: str, conversation_id: int, user: Any, origin: str) -> ClientConnection:
    """A real WebSocket client on our daphne, signed in by the user's session cookie."""
    client = Client()
    client.force_login(user)
    return connect(asgi_server.replace("http://", "ws://") + f"/ws/chat/{conversation_id}/", origin=Origin(origin),
                   additional_headers={"Cookie": f"sessionid={client.cookies['sessionid'].value}"}, open_timeout=30)


def _refused(asgi_server: str, conversation_id: int, user: Any, origin: str) -> bool:
    try:
        _socket(asgi_server, conversation_id, user, origin).close()
    except InvalidHandshake:
        return True
    return False


@off_the_event_loop
def test_it_refuses_the_chat_socket_from_a_foreign_origin_and_for_another_tenant(world, asgi_server) -> None:
    """On the real server (daphne, the origin check, the consumer), with a browser's handshake."""
    with tenant_context(world.tenant_a.pk):
        own = Conversation.objects.create(tenant=world.tenant_a, user=world.alice).pk
    with tenant_context(world.tenant_b.pk):
        conversation = Conversation.objects.create(tenant=world.tenant_b, user=world.charlie, title=CANARY)
        question = Message.objects.create(tenant=world.tenant_b, conversation=conversation, role="user", content=CANARY)
        reply = Message.objects.create(tenant=world.tenant_b, conversation=conversation, role="assistant",
                                       reply_to=question, status=Message.Status.STREAMING)
    streams.StreamWriter(reply).token(CANARY)  # B's turn, half written
    port = urlsplit(asgi_server).port
    ledger = Ledger("WebSocket: a foreign Origin, tenant B's conversation, and B's turn named in frames", "acceptances")
    for origin in FOREIGN_ORIGINS:
        origin = origin.format(port=port, other=(port or 0) + 1)
        ledger.attempts += 1
        if not _refused(asgi_server, own, world.alice, origin):
            ledger.findings.append(f"a socket from {origin} was accepted")
    for user in (world.alice, world.bob, world.dora, world.erin):
        ledger.attempts += 1
        if not _refused(asgi_server, conversation.pk, user, asgi_server):
            ledger.findings.append(f"{user.username} opened tenant B's conversation {conversation.pk}")
    # From the page's own origin, her own conversation opens (the refusals above were real); on it,
    # Alice names B's turn in a resume and a stop: refused, and nothing relayed or stopped.
    with _socket(asgi_server, own, world.alice, asgi_server) as socket:
        for frame in ({"type": "resume", "message_id": reply.pk, "last_seq": 0},
                      {"type": "stop", "message_id": reply.pk}):
            socket.send(json.dumps(frame))
            answer = json.loads(socket.recv(timeout=10))
            ledger.attempts += 1
            if answer["type"] != "error" or CANARY in json.dumps(answer):
                ledger.findings.append(f"{frame['type']} of B's turn answered {answer}")
        with contextlib.suppress(TimeoutError):
            ledger.findings.append(f"B's turn was relayed: {socket.recv(timeout=0.5)!r}")
    if streams.is_cancel_requested(reply):
        ledger.findings.append("B's turn was stopped from A's socket")
    ledger.report()
    assert not ledger.findings, "\n".join(ledger.findings)
