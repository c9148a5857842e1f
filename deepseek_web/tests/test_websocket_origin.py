"""The WebSocket origin check: only the page's own origin (scheme, host and port) or a trusted one.

Another site on the same host but another port (a different origin to the browser) must not open
a socket with the user's cookies: cross-site WebSocket hijacking.
"""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from chat.models import Conversation
from deepseek_web.asgi import application
from tenants.rls import tenant_context

pytestmark = pytest.mark.django_db(transaction=True)


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def connect(user, conversation_id: int, **headers: str) -> bool:
    sent = [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    sent.append((b"cookie", await database_sync_to_async(session_cookie)(user)))
    communicator = WebsocketCommunicator(application, f"/ws/chat/{conversation_id}/", headers=sent)
    connected, _ = await communicator.connect(timeout=5)
    # Refused too: the denying consumer waits for the disconnect, and a task left waiting would
    # hang the event loop's shutdown at the end of the test.
    await communicator.disconnect()
    return connected


@pytest.fixture
def conversation(world) -> Conversation:
    with tenant_context(world.tenant_a.pk):
        return Conversation.objects.create(tenant=world.tenant_a, user=world.alice)


async def test_it_accepts_the_pages_own_origin(world, conversation) -> None:
    connected = await connect(world.alice, conversation.pk, host="localhost:8000", origin="http://localhost:8000")
    assert connected


@pytest.mark.parametrize("origin", [
    "http://localhost:9000",  # another port on the same host: another origin, maybe another program
    "http://localhost",  # port 80
    "https://localhost:8000",  # another scheme
    "http://127.0.0.1:8000",  # another host, even if allowed
    "null",  # a sandboxed frame or a file
    "http://localhost:99999",  # no port at all
])
async def test_it_refuses_another_origin_before_accept(world, conversation, origin) -> None:
    connected = await connect(world.alice, conversation.pk, host="localhost:8000", origin=origin)
    assert not connected


async def test_it_refuses_no_origin_and_a_host_outside_allowed_hosts(world, conversation) -> None:
    connected = await connect(world.alice, conversation.pk, host="localhost:8000")
    assert not connected
    connected = await connect(world.alice, conversation.pk, host="evil.example:8000",
                                 origin="http://evil.example:8000")
    assert not connected


async def test_it_accepts_a_trusted_origin_and_https_behind_a_trusted_proxy(world, conversation, settings) -> None:
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com", "https://*.corp.example"]
    connected = await connect(world.alice, conversation.pk, host="localhost:8000",
                                 origin="https://chat.example.com")
    assert connected
    connected = await connect(world.alice, conversation.pk, host="localhost:8000",
                                 origin="https://eu.corp.example")
    assert connected
    connected = await connect(world.alice, conversation.pk, host="localhost:8000",
                                 origin="https://chat.example.com:8443")
    assert not connected

    settings.ALLOWED_HOSTS = ["assistant.example.com"]
    # Without a proxy that Django trusts, the request came in over plain HTTP: https is another origin.
    connected = await connect(world.alice, conversation.pk, host="assistant.example.com",
                                 x_forwarded_proto="https", origin="https://assistant.example.com")
    assert not connected
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    connected = await connect(world.alice, conversation.pk, host="assistant.example.com",
                                 x_forwarded_proto="https", origin="https://assistant.example.com")
    assert connected
    connected = await connect(world.alice, conversation.pk, host="assistant.example.com",
                                 x_forwarded_proto="https", origin="http://assistant.example.com")
    assert not connected
