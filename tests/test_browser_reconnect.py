"""A socket cut between `submit` and `submitted` (issue 12, finding 16): the page reconnects,
re-sends the submit with its client id, and shows the question and its answer once."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Page, WebSocketRoute, expect

from chat.models import Message
from inference.standin import chunk_text
from tenants.rls import tenant_context

from .conftest import STANDIN_TOKENS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_it_shows_the_answer_once_after_the_confirmation_was_lost(
    log_in, world, capacity_stack, page: Page
) -> None:
    asgi_server = capacity_stack
    cut: dict[str, Any] = {"done": False}

    def cut_before_submitted(route: WebSocketRoute) -> None:
        # The page's socket goes through Playwright to the real daphne; the first `submitted`
        # frame is swallowed and the page's side closed, as a dropped network would.
        server = route.connect_to_server()

        def from_server(message: str | bytes) -> None:
            if not cut["done"] and isinstance(message, str) and '"type": "submitted"' in message:
                cut["done"] = True
                route.close(code=1001, reason="cut")
                return
            route.send(message)

        server.on_message(from_server)

    page.route_web_socket(re.compile(r".*/ws/chat/\d+/$"), cut_before_submitted)
    log_in(page, asgi_server, "alice", world.password)
    page.click("text=+ New chat")
    page.wait_for_function("() => document.getElementById('send') !== null")
    page.fill("#prompt", "Count for me, please.")
    page.click("#send")

    answer = page.locator(".msg-assistant")
    expect(answer).to_have_count(1, timeout=30_000)
    expect(answer).to_have_attribute("data-status", "done", timeout=30_000)
    assert cut["done"], "the first confirmation should have been cut"
    expect(page.locator(".msg-user")).to_have_count(1)
    expect(page.locator(".msg-user")).to_contain_text("Count for me, please.")
    expected = "".join(chunk_text(n) for n in range(1, STANDIN_TOKENS + 1)).strip()
    assert answer.locator(".msg-body").inner_text().strip() == expected
    expect(page.locator("#prompt")).to_have_value("")
    with tenant_context(world.tenant_a.pk):
        assert Message.objects.filter(role=Message.Role.USER).count() == 1
        assert Message.objects.filter(role=Message.Role.ASSISTANT, status=Message.Status.DONE).count() == 1
