"""A person in a browser: log in, ask, watch the answer stream in, reload, stop a long answer."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from chat.models import Message
from tenants.rls import tenant_context

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Set before the question is sent: remembers whether the answer was ever visible while still
# being written, so the test does not depend on polling at the right moment.
WATCH_PARTIAL = """
() => {
  window.sawPartial = false;
  new MutationObserver(() => {
    for (const el of document.querySelectorAll('.msg-assistant[data-status="streaming"]')) {
      if (el.querySelector('.msg-body').textContent.trim().length > 0) window.sawPartial = true;
    }
  }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true, attributes: true});
}
"""


def ask(page: Page, question: str) -> None:
    page.click("text=+ New chat")
    expect(page.locator("#messages")).to_be_visible()
    page.wait_for_function("() => document.getElementById('send') !== null")
    page.evaluate(WATCH_PARTIAL)
    page.fill("#prompt", question)
    page.click("#send")


def test_it_streams_an_answer_and_shows_it_again_after_reload(
    log_in, world, asgi_server, gpu_worker, page: Page, settings
) -> None:
    settings.CHAT_MAX_NEW_TOKENS = 48
    log_in(page, asgi_server, "alice", world.password)
    ask(page, "Why is the sky blue? Explain in a few sentences.")

    answer = page.locator(".msg-assistant").last
    expect(answer).to_have_attribute("data-status", "done", timeout=120_000)
    assert page.evaluate("window.sawPartial"), "text should arrive before the answer completes"
    expect(page.locator(".conv.active .conv-title")).to_have_text("Why is the sky blue? Explain in a few sentences.")
    streamed_text = answer.locator(".msg-body").inner_text().strip()
    assert streamed_text

    with tenant_context(world.tenant_a.pk):
        stored = Message.objects.get(role="assistant")
    assert stored.status == "done" and stored.token_count > 0
    page.reload()
    after_reload = page.locator(".msg-assistant").last
    expect(after_reload).to_have_attribute("data-status", "done")
    assert after_reload.locator(".msg-body").inner_text().strip() == streamed_text
    expect(page.locator(".msg-user").last).to_contain_text("Why is the sky blue?")


def test_it_stops_a_long_answer_and_shows_it_as_cancelled(
    log_in, world, asgi_server, gpu_worker, page: Page, settings
) -> None:
    settings.CHAT_MAX_NEW_TOKENS = 400
    log_in(page, asgi_server, "alice", world.password)
    ask(page, "Write a very long story about a dragon who learns to cook.")

    page.wait_for_function("() => window.sawPartial === true", timeout=120_000)
    page.click("#stop")
    answer = page.locator(".msg-assistant").last
    expect(answer).to_have_attribute("data-status", "cancelled", timeout=60_000)
    expect(answer.locator(".msg-status")).to_have_text("Stopped")
    with tenant_context(world.tenant_a.pk):
        stored = Message.objects.get(role="assistant")
    assert stored.status == "cancelled" and 0 < stored.token_count < 400


def test_it_keeps_another_tenant_out_of_a_conversation(log_in, world, asgi_server, page: Page) -> None:
    from chat.models import Conversation

    with tenant_context(world.tenant_a.pk):
        conversation = Conversation.objects.create(tenant=world.tenant_a, user=world.alice, title="Alice's plans")
    log_in(page, asgi_server, "charlie", world.password)
    response = page.goto(f"{asgi_server}/c/{conversation.pk}/")
    assert response is not None and response.status == 404
    assert "Alice's plans" not in page.content()
    expect(page).to_have_url(re.compile(rf"/c/{conversation.pk}/$"))
