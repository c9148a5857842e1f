"""The official `openai` client against the running product: daphne, the GPU worker, SmolLM2.

The data path is the chat page's: view -> service -> gpu task -> engine -> Redis Stream -> SSE.
"""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from chat.models import Conversation, Message
from openai_api.models import ApiKey
from tenants.rls import tenant_context

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Why is the sky blue? Answer in two sentences."}]


def client_for(asgi_server: str, key: str) -> openai.OpenAI:
    # No retries: a retried request would be a second turn, and hide the first answer's status.
    return openai.OpenAI(base_url=f"{asgi_server}/v1", api_key=key, max_retries=0, timeout=180)


def stored(tenant: Any, completion_id: str) -> Message:
    with tenant_context(tenant.pk):
        return Message.objects.select_related("conversation").get(pk=int(completion_id.removeprefix("chatcmpl-")))


def test_it_streams_deltas_that_make_the_completed_text(world, asgi_server, gpu_worker, api_key_for) -> None:
    client = client_for(asgi_server, api_key_for(world.tenant_a, world.alice))
    stream = client.chat.completions.create(model="deepseek-web", messages=QUESTION, stream=True, max_tokens=24,
                                            stream_options={"include_usage": True})
    deltas: list[str] = []
    finish, usage, ids = None, None, set()
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk" and chunk.model == "deepseek-web"
        ids.add(chunk.id)
        if chunk.choices:
            if chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert len(ids) == 1 and len(deltas) > 1, "the answer should arrive in several chunks"
    reply = stored(world.tenant_a, ids.pop())
    assert reply.status == Message.Status.DONE and "".join(deltas) == reply.content != ""
    assert finish in ("stop", "length") and reply.timings["finish_reason"] == finish
    assert usage is not None and usage.completion_tokens == reply.token_count <= 24
    assert usage.prompt_tokens == reply.timings["prompt_tokens"] > 0
    assert reply.conversation.source == Conversation.Source.API and reply.conversation.user_id == world.alice.pk
    assert reply.served_by

    # Greedy by default: the same question without streaming gets the same text, in one object.
    completion = client.chat.completions.create(model="deepseek-web", messages=QUESTION, max_tokens=24)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "".join(deltas)
    assert completion.choices[0].finish_reason == finish
    assert completion.usage is not None and completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens)
    assert completion.system_fingerprint == stored(world.tenant_a, completion.id).served_by
    with tenant_context(world.tenant_a.pk):
        assert ApiKey.objects.get().last_used_at is not None


def test_it_lists_models_and_refuses_wrong_and_revoked_keys(world, asgi_server, api_key_for) -> None:
    from audit.services import SYSTEM
    from knowledge.models import KnowledgeBase
    from openai_api.services import api_key_revoke

    with tenant_context(world.tenant_a.pk):
        kb = KnowledgeBase.objects.create(tenant=world.tenant_a, name="A-SECRET-KB", access_roles=["employee"])
    key = api_key_for(world.tenant_a, world.alice)
    client = client_for(asgi_server, key)
    assert [m.id for m in client.models.list()] == ["deepseek-web", f"deepseek-web:kb:{kb.pk}"]
    assert client.models.retrieve(f"deepseek-web:kb:{kb.pk}").id == f"deepseek-web:kb:{kb.pk}"

    with pytest.raises(openai.AuthenticationError) as wrong:
        client_for(asgi_server, key[:-2] + "xx").models.list()
    assert wrong.value.status_code == 401 and wrong.value.code == "invalid_api_key"

    with tenant_context(world.tenant_a.pk):
        api_key_revoke(key=ApiKey.objects.get(), actor=SYSTEM)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="deepseek-web", messages=QUESTION, stream=True)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()

    # Tenant B's key sees nothing of tenant A, and A's knowledge base is no model of B's.
    charlie = client_for(asgi_server, api_key_for(world.tenant_b, world.charlie))
    assert [m.id for m in charlie.models.list()] == ["deepseek-web"]
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as missing:
            charlie.chat.completions.create(model=f"deepseek-web:kb:{kb.pk}", messages=QUESTION, stream=stream)
        assert missing.value.code == "model_not_found" and "A-SECRET-KB" not in str(missing.value.body)
    with pytest.raises(openai.NotFoundError):
        charlie.models.retrieve(f"deepseek-web:kb:{kb.pk}")
    with tenant_context(world.tenant_b.pk):
        assert not Message.objects.exists()


def test_it_answers_from_a_knowledge_base_model_with_citations(world, asgi_server, gpu_worker, api_key_for) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    from audit.services import SYSTEM
    from knowledge.models import Document
    from knowledge.services.documents import documents_upload
    from knowledge.services.knowledge_bases import knowledge_base_create

    with tenant_context(world.tenant_a.pk):
        kb = knowledge_base_create(tenant=world.tenant_a, name="Handbook", actor=SYSTEM)
        documents_upload(knowledge_base=kb, uploaded_by=None, actor=SYSTEM, files=[SimpleUploadedFile(
            "travel.md", b"# Travel policy\n\nEmployees travel by train for trips under 500 km. Flights need approval.")])
    deadline = time.monotonic() + 120
    while True:  # the worker parses, chunks and embeds it
        with tenant_context(world.tenant_a.pk):
            status = Document.objects.get().status
        if status == "ready" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status == "ready"

    client = client_for(asgi_server, api_key_for(world.tenant_a, world.alice))
    completion = client.chat.completions.create(
        model=f"deepseek-web:kb:{kb.pk}", max_tokens=16,
        messages=[{"role": "user", "content": "How do employees travel for short trips?"}])
    citations = getattr(completion, "citations", None)
    assert citations and citations[0]["document_title"] and citations[0]["knowledge_base_id"] == kb.pk
    assert completion.choices[0].message.content == stored(world.tenant_a, completion.id).content
