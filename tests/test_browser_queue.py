"""A person in a browser whose question waits behind others sees how many turns are ahead of it."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import Page, expect

from chat import dispatch
from deepseek_web.redis_client import sync_client
from tests.test_browser import ask

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_it_shows_the_turns_ahead_while_a_question_waits(log_in, world, asgi_server, page: Page, settings) -> None:
    # Tenant A is at its running cap, so no worker (if one runs in this session) takes A's turns,
    # and two turns of Alice's already wait: hers is third.
    settings.CHAT_MAX_RUNNING_PER_TENANT = 1
    sync_client().zadd(f"{dispatch.PREFIX}running:{world.tenant_a.pk}", {"900000": time.time() + 600})
    for message_id in (900001, 900002):
        dispatch.enqueue(tenant_id=world.tenant_a.pk, user_id=world.alice.pk, message_id=message_id, weight=1)

    log_in(page, asgi_server, "alice", world.password)
    ask(page, "When is the next holiday?")
    status = page.locator(".msg-assistant").last.locator(".msg-status")
    expect(status).to_have_text("Waiting — 2 ahead of you")
    dispatch.discard(900001)
    expect(status).to_have_text("Waiting — 1 ahead of you")
    dispatch.discard(900002)
    expect(status).to_have_text("Waiting — you are next")
