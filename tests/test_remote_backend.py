"""Our OpenAI-compatible client backend against a second running instance of the project.

The instance is the product itself (daphne plus the GPU worker with SmolLM2) serving
/v1/chat/completions, so no mock server is needed: our client streams from it, and a chat turn
of tenant A is routed to it and records it as its backend. Tenant B, which owns the instance's
API key, is marked sensitive: its turns stay on the local model, so the routed turn cannot
bounce back to the instance that is answering it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from audit.services import SYSTEM, actor_for
from chat import services
from chat.models import Conversation, Message
from console import services as tenant_services
from inference.engine import SamplingParams
from inference.engine.remote import RemoteServer, RemoteServerConfig, Timeouts
from tenants.rls import tenant_context

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "deepseek-web"
QUESTION = [{"role": "user", "content": "Why is the sky blue? Answer in two sentences."}]
TIMEOUTS = Timeouts(connect_s=5, first_token_s=120, idle_s=60, total_s=240)


def api_turn(tenant: Any) -> Message:
    """The newest turn the instance stored for a request of its API."""
    with tenant_context(tenant.pk):
        return Message.objects.filter(role=Message.Role.ASSISTANT, conversation__source=Conversation.Source.API
                                      ).latest("created_at")


def wait_final(message: Message, timeout: float = 180) -> Message:
    deadline = time.monotonic() + timeout
    while True:
        with tenant_context(message.tenant_id):
            message.refresh_from_db()
        if message.is_final or time.monotonic() > deadline:
            return message
        time.sleep(0.2)


def test_it_streams_an_answer_from_a_second_instance(world, asgi_server, gpu_worker, api_key_for) -> None:
    remote = RemoteServer(RemoteServerConfig(name="twin", base_url=f"{asgi_server}/v1", model=MODEL,
                                        api_key=api_key_for(world.tenant_b, world.charlie), timeouts=TIMEOUTS))
    health = remote.health()
    assert health.ok, health.reason

    handle = remote.submit_chat(QUESTION, SamplingParams(max_new_tokens=24))
    deltas = list(handle)
    assert handle.error is None and deltas[-1].finished and deltas[-1].finish_reason in ("stop", "length")
    assert len([d for d in deltas if d.text]) > 1, "the answer should arrive in several chunks"
    served = api_turn(world.tenant_b)
    assert served.status == Message.Status.DONE and handle.text == served.content != ""
    assert handle.usage["completion_tokens"] == served.token_count == handle.token_count <= 24
    assert handle.usage["prompt_tokens"] == served.timings["prompt_tokens"] > 0
    assert handle.ttft_s is not None and handle.attempts == 1

    # Cancel closes the stream; the instance stops the turn it was writing, as the Stop button does.
    handle = remote.submit_chat(QUESTION, SamplingParams(max_new_tokens=400))
    assert handle.wait_started(timeout=120) and handle.finish_reason is None
    handle.cancel()
    assert handle.finish_reason == "cancelled"
    stopped = wait_final(api_turn(world.tenant_b), timeout=60)
    assert stopped.status == Message.Status.CANCELLED and stopped.token_count < 400
    remote.close()


def test_it_routes_a_chat_turn_to_the_second_instance_and_records_it(
    world, settings, asgi_server, gpu_worker, api_key_for
) -> None:
    with tenant_context(world.tenant_b.pk):
        tenant_services.tenant_set_sensitive(tenant=world.tenant_b, sensitive=True, actor=SYSTEM)
    settings.CHAT_MAX_NEW_TOKENS = 24
    # The worker thread that runs tenant A's turn reads these settings (it runs in this process).
    settings.INFERENCE_BACKENDS = [{
        "name": "twin", "base_url": f"{asgi_server}/v1", "model": MODEL,
        "api_key": api_key_for(world.tenant_b, world.charlie),
        "timeouts": {"first_token_s": 120, "idle_s": 60, "total_s": 240},
    }]
    with tenant_context(world.tenant_a.pk):
        conversation = Conversation.objects.create(tenant=world.tenant_a, user=world.alice)
        _, reply = services.message_submit(conversation=conversation, text="Why is the sky blue?",
                                           actor=actor_for(user_id=world.alice.pk, role="employee"))
    # Committed: the GPU worker runs the turn, which streams from the instance's API, whose
    # own turn (tenant B's, sensitive) the same worker answers with the local model.
    reply = wait_final(reply)
    assert reply.status == Message.Status.DONE, reply.error
    assert reply.served_by == "twin"
    assert [(c["name"], c["outcome"]) for c in reply.timings["routing"]["candidates"]] == [("twin", "served")]
    served = api_turn(world.tenant_b)
    assert served.served_by.startswith("local:") and served.timings["routing"]["sensitive"]
    assert reply.content == served.content != "" and reply.token_count == served.token_count <= 24
    assert reply.timings["prompt_tokens"] == served.timings["prompt_tokens"] > 0
