"""The GPU worker's side of an API turn: the request's own prompt and sampling, and its usage."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.conf import settings

from audit.services import SYSTEM
from chat import streams
from chat import turns as chat_turns
from chat.models import Message
from chat.prompts import build_chat_messages
from knowledge.retrieval import Passage
from openai_api import services, wire
from openai_api.access import api_caller_get
from tenants.rls import tenant_context


@pytest.fixture
def submit(world, django_capture_on_commit_callbacks) -> Any:
    with tenant_context(world.tenant_a.pk):
        key = services.api_key_create(tenant=world.tenant_a, name="k", user=world.alice, created_by=None,
                                      actor=SYSTEM).plaintext
    caller = api_caller_get(f"Bearer {key}")

    def run(body: dict[str, Any]) -> Message:
        request = wire.completion_request_parse(json.dumps({"model": wire.BASE_MODEL, **body}).encode())
        with django_capture_on_commit_callbacks(execute=False), tenant_context(world.tenant_a.pk):
            return services.chat_completion_submit(caller=caller, request=request, actor=SYSTEM)

    return run


def generated(reply: Message) -> Message:
    chat_turns.message_generate(tenant_id=reply.tenant_id, message_id=reply.pk)
    with tenant_context(reply.tenant_id):
        reply.refresh_from_db()
    return reply


def test_it_builds_the_prompt_from_the_requests_own_messages(submit) -> None:
    with_system = submit({"messages": [{"role": "developer", "content": "Answer in French."},
                                       {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Salut"},
                                       {"role": "user", "content": "Travel policy?"}]})
    passage = Passage(chunk_id=1, document_id=2, knowledge_base_id=3, document_title="Handbook", ordinal=0,
                      heading="Travel", text="Book economy class.", page=None)
    with tenant_context(with_system.tenant_id):
        prompt = build_chat_messages(assistant_message=with_system, passages=[passage])
        plain = build_chat_messages(assistant_message=submit({"messages": [{"role": "user", "content": "Hello"}]}))
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
    assert prompt[0]["content"] == "Answer in French." and prompt[1]["content"] == "Hi"
    assert "[1] Handbook — Travel" in prompt[3]["content"] and prompt[3]["content"].endswith("Travel policy?")
    # Without a system message of its own, the request gets ours; earlier turns of other requests never appear.
    assert plain == [{"role": "system", "content": settings.CHAT_SYSTEM_PROMPT}, {"role": "user", "content": "Hello"}]


def test_it_honours_max_tokens_and_stop_and_records_usage(submit, use_model, tiny_model_dir) -> None:
    use_model(tiny_model_dir, CHAT_MAX_NEW_TOKENS=64)
    question = [{"role": "user", "content": "Count from one to ten."}]
    short = generated(submit({"messages": question, "max_tokens": 3}))
    assert short.status == Message.Status.DONE and 0 < short.token_count <= 3
    assert short.timings["finish_reason"] == "length" and short.timings["prompt_tokens"] > 5
    assert short.served_by

    full = generated(submit({"messages": question, "max_tokens": 24}))
    assert len(full.content) > 6
    stop = full.content[4:7]
    stopped = generated(submit({"messages": question, "max_tokens": 24, "stop": [stop]}))
    assert stopped.timings["finish_reason"] == "stop"
    assert stopped.content == full.content[: full.content.index(stop)]
    # What streamed equals what was stored.
    tokens = [e.fields["text"] for e in streams.read_all(stopped) if e.kind == "token"]
    assert "".join(tokens) == stopped.content
