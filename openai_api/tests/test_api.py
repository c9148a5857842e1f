"""The /v1/ endpoints without a GPU worker: keys, models, tenancy, validation, quotas, the stored turn."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from audit.services import SYSTEM
from chat.models import Conversation, ConversationKnowledgeBase, Message
from chat.selectors import conversation_list
from knowledge.models import KnowledgeBase
from openai_api import services, wire
from openai_api.access import api_caller_get
from openai_api.models import ApiKey
from tenants.models import Membership
from tenants.rls import tenant_context


def make_key(tenant, user) -> str:
    with tenant_context(tenant.pk):
        return services.api_key_create(tenant=tenant, name="k", user=user, created_by=None, actor=SYSTEM).plaintext


def make_kb(tenant, name: str, roles: list[str] | None = None) -> KnowledgeBase:
    with tenant_context(tenant.pk):
        return KnowledgeBase.objects.create(tenant=tenant, name=name,
                                            access_roles=roles if roles is not None else ["employee", "owner"])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def post_completion(key: str, body: dict[str, Any] | str, client: Client | None = None) -> Any:
    data = body if isinstance(body, str) else json.dumps(body)
    return (client or Client()).post(reverse("openai:chat_completions"), data, content_type="application/json",
                                     headers=bearer(key))


def model_ids(key: str) -> list[str]:
    response = Client().get(reverse("openai:model_list"), headers=bearer(key))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    return [m["id"] for m in body["data"]]


def assert_openai_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def all_messages() -> int:
    from tenants.models import Tenant

    count = 0
    for tenant_id in Tenant.objects.values_list("pk", flat=True):
        with tenant_context(tenant_id):
            count += Message.objects.count()
    return count


def test_it_answers_401_in_openai_format_for_missing_wrong_and_revoked_keys(world) -> None:
    key = make_key(world.tenant_a, world.alice)
    assert model_ids(key)[0] == wire.BASE_MODEL
    assert_openai_error(Client().get(reverse("openai:model_list")), 401, "invalid_api_key")
    assert_openai_error(Client().get(reverse("openai:model_list"), headers=bearer(key + "x")), 401, "invalid_api_key")
    assert_openai_error(Client().get(reverse("openai:model_list"), headers={"Authorization": f"Basic {key}"}), 401)
    response = post_completion("dsw-wrong", {"model": wire.BASE_MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert_openai_error(response, 401, "invalid_api_key")
    assert response["WWW-Authenticate"].startswith("Bearer")
    with tenant_context(world.tenant_a.pk):
        services.api_key_revoke(key=ApiKey.objects.get(), actor=SYSTEM)
    assert "revoked" in assert_openai_error(Client().get(reverse("openai:model_list"), headers=bearer(key)), 401)["message"]
    assert all_messages() == 0


def test_it_refuses_keys_of_deactivated_users_and_members(world) -> None:
    key = make_key(world.tenant_a, world.alice)
    with tenant_context(world.tenant_a.pk):
        Membership.objects.filter(tenant=world.tenant_a, user=world.alice).update(is_active=False)
    assert_openai_error(Client().get(reverse("openai:model_list"), headers=bearer(key)), 401, "invalid_api_key")
    with tenant_context(world.tenant_a.pk):
        Membership.objects.filter(tenant=world.tenant_a, user=world.alice).update(is_active=True)
    assert model_ids(key)
    world.alice.is_active = False
    world.alice.save(update_fields=["is_active"])
    assert_openai_error(Client().get(reverse("openai:model_list"), headers=bearer(key)), 401, "invalid_api_key")


def test_it_lists_the_chat_model_and_the_knowledge_bases_the_keys_user_may_read(world) -> None:
    handbook = make_kb(world.tenant_a, "Handbook")
    board = make_kb(world.tenant_a, "Board minutes", roles=["owner"])
    alice_models = model_ids(make_key(world.tenant_a, world.alice))
    assert alice_models == [wire.BASE_MODEL, wire.kb_model_id(handbook.pk)]
    assert set(model_ids(make_key(world.tenant_a, world.bob))) == {
        wire.BASE_MODEL, wire.kb_model_id(handbook.pk), wire.kb_model_id(board.pk)}
    detail = Client().get(reverse("openai:model_detail", args=[wire.kb_model_id(handbook.pk)]),
                          headers=bearer(make_key(world.tenant_a, world.alice)))
    assert detail.status_code == 200 and detail.json()["object"] == "model" and "Handbook" in detail.json()["name"]


def test_it_shows_tenant_b_keys_nothing_of_tenant_a(world) -> None:
    secret = make_kb(world.tenant_a, "A-SECRET-KB")
    charlie = make_key(world.tenant_b, world.charlie)
    assert model_ids(charlie) == [wire.BASE_MODEL]
    listing = Client().get(reverse("openai:model_list"), headers=bearer(charlie)).content.decode()
    assert "A-SECRET-KB" not in listing and "tenant-a" not in listing
    model = wire.kb_model_id(secret.pk)
    assert_openai_error(Client().get(reverse("openai:model_detail", args=[model]), headers=bearer(charlie)), 404, "model_not_found")
    response = post_completion(charlie, {"model": model, "messages": [{"role": "user", "content": "secrets?"}]})
    error = assert_openai_error(response, 404, "model_not_found")
    assert "A-SECRET-KB" not in json.dumps(error)
    # The same answer as for a knowledge base that never existed.
    missing = post_completion(charlie, {"model": wire.kb_model_id(secret.pk + 999),
                                        "messages": [{"role": "user", "content": "x"}]})
    assert assert_openai_error(missing, 404, "model_not_found")["type"] == error["type"]
    assert all_messages() == 0


def test_it_gives_404_for_a_knowledge_base_the_keys_user_may_not_read(world) -> None:
    board = make_kb(world.tenant_a, "Board minutes", roles=["owner"])
    response = post_completion(make_key(world.tenant_a, world.alice),
                               {"model": wire.kb_model_id(board.pk), "messages": [{"role": "user", "content": "x"}]})
    assert_openai_error(response, 404, "model_not_found")
    assert_openai_error(post_completion(make_key(world.tenant_a, world.alice),
                                        {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
                        404, "model_not_found")


@pytest.mark.parametrize("body, param", [
    ("not json", None),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "deepseek-web", "messages": []}, "messages"),
    ({"model": "deepseek-web", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"model": "deepseek-web", "messages": [{"role": "system", "content": "only a system message"}]}, "messages"),
    ({"model": "deepseek-web", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content"),
    ({"model": "deepseek-web", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"model": "deepseek-web", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
    ({"model": "deepseek-web", "messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
    ({"model": "deepseek-web", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "deepseek-web", "messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5}, "stop"),
])
def test_it_refuses_invalid_requests_with_400_and_stores_nothing(world, body, param) -> None:
    error = assert_openai_error(post_completion(make_key(world.tenant_a, world.alice), body), 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert all_messages() == 0


def test_it_answers_405_in_openai_format_and_needs_no_csrf_token(world) -> None:
    key = make_key(world.tenant_a, world.alice)
    assert_openai_error(Client().get(reverse("openai:chat_completions"), headers=bearer(key)), 405)
    # Bearer keys are no cookies: CSRF does not apply (a CSRF refusal would be an HTML 403).
    strict = Client(enforce_csrf_checks=True)
    assert_openai_error(post_completion("dsw-wrong", {"model": "deepseek-web"}, client=strict), 401)
    assert_openai_error(post_completion(key, {"model": "deepseek-web", "n": 3,
                                              "messages": [{"role": "user", "content": "x"}]}, client=strict), 400)


def test_it_answers_429_when_the_users_daily_messages_are_used_up(world) -> None:
    world.tenant_a.quota_messages_per_user_day = 1
    world.tenant_a.save(update_fields=["quota_messages_per_user_day"])
    key = make_key(world.tenant_a, world.alice)
    caller = api_caller_get(f"Bearer {key}")
    request = wire.completion_request_parse(json.dumps(
        {"model": "deepseek-web", "messages": [{"role": "user", "content": "one"}]}).encode())
    with tenant_context(world.tenant_a.pk):
        services.chat_completion_submit(caller=caller, request=request, actor=SYSTEM)
    response = post_completion(key, {"model": "deepseek-web", "messages": [{"role": "user", "content": "two"}]})
    error = assert_openai_error(response, 429, "insufficient_quota")
    assert "daily limit of 1" in error["message"]
    assert all_messages() == 2  # the first request's question and its pending answer


def test_it_stores_a_request_as_a_queued_turn_of_its_own_hidden_conversation(
    world, django_capture_on_commit_callbacks
) -> None:
    kb = make_kb(world.tenant_a, "Handbook")
    key = make_key(world.tenant_a, world.alice)
    caller = api_caller_get(f"Bearer {key}")
    request = wire.completion_request_parse(json.dumps({
        "model": wire.kb_model_id(kb.pk), "max_tokens": 10**6, "temperature": 0.5, "top_p": 0.9, "stop": "END",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "First?"},
                     {"role": "assistant", "content": "Yes."},
                     {"role": "user", "content": [{"type": "text", "text": "Travel "}, {"type": "text", "text": "policy?"}]}],
    }).encode())
    with django_capture_on_commit_callbacks() as queued, tenant_context(world.tenant_a.pk):
        reply = services.chat_completion_submit(caller=caller, request=request, actor=caller.actor(
            ip="10.0.0.1", user_agent="OpenAI/Python", trace_id=""))
    assert len(queued) == 1  # generate_reply on the gpu queue
    with tenant_context(world.tenant_a.pk):
        reply.refresh_from_db()
        conversation = Conversation.objects.get(pk=reply.conversation_id)
        assert reply.reply_to_id is not None
        question = Message.objects.get(pk=reply.reply_to_id)
        chosen = list(ConversationKnowledgeBase.objects.filter(conversation=conversation)
                      .values_list("knowledge_base_id", flat=True))
        submitted = AuditEvent.objects.get(action="message.submit")
        assert conversation_list(user=world.alice, tenant=world.tenant_a).count() == 0
    assert conversation.source == Conversation.Source.API and conversation.user_id == world.alice.pk
    assert reply.status == Message.Status.PENDING and question.content == "Travel policy?"
    assert chosen == [kb.pk]
    from django.conf import settings

    assert reply.request["sampling"] == {"max_new_tokens": settings.CHAT_MAX_NEW_TOKENS, "temperature": 0.5,
                                         "top_p": 0.9, "stop": ["END"]}
    assert [m["role"] for m in reply.request["messages"]] == ["system", "user", "assistant", "user"]
    assert submitted.actor_id == world.alice.pk and key[:12] in submitted.actor_name
    assert submitted.source_ip == "10.0.0.1"


# Hostile bodies (issue 12): each gave a 500 (Django's debug page under `./dsw run`), or an HTML 400.
HOSTILE_BODIES = {
    "deeply nested JSON": '{"model": "deepseek-web", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "a NUL character": json.dumps({"model": "deepseek-web", "messages": [{"role": "user", "content": "a\u0000b"}]}),
    "a lone surrogate": '{"model": "deepseek-web", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
    "a NUL in the model name": json.dumps({"model": "deep\u0000seek", "messages": [{"role": "user", "content": "hi"}]}),
}


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_it_refuses_hostile_bodies_with_a_clean_400_and_stores_nothing(world, body) -> None:
    key = make_key(world.tenant_a, world.alice)
    before = all_messages()
    assert_openai_error(post_completion(key, body), 400)
    assert all_messages() == before


def test_it_answers_an_oversized_body_in_openai_format(world, settings) -> None:
    key = make_key(world.tenant_a, world.alice)
    big = json.dumps({"model": "deepseek-web", "messages": [{"role": "user", "content": "x" * 10_000_000}]})
    error = assert_openai_error(post_completion(key, big), 413, "request_too_large")
    assert str(settings.DATA_UPLOAD_MAX_MEMORY_SIZE) in error["message"]
