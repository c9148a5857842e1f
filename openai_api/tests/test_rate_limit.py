"""/v1 rate limits (openai_api.ratelimit): per API key, and per client address for wrong keys."""

from __future__ import annotations

from django.test import Client
from django.urls import reverse

from openai_api.tests.test_api import assert_openai_error, bearer, make_key


def models(key: str, address: str = "10.0.0.1"):
    return Client(REMOTE_ADDR=address).get(reverse("openai:model_list"), headers=bearer(key))


def test_it_answers_429_with_retry_after_once_a_keys_bucket_is_empty(world, settings) -> None:
    settings.API_RATE_PER_MINUTE, settings.API_RATE_BURST = 1, 3
    alices, charlies = make_key(world.tenant_a, world.alice), make_key(world.tenant_b, world.charlie)
    assert [models(alices).status_code for _ in range(3)] == [200, 200, 200]
    refused = models(alices)
    error = assert_openai_error(refused, 429, "rate_limit_exceeded")
    assert error["type"] == "requests" and "1 requests per minute" in error["message"]
    assert 1 <= int(refused["Retry-After"]) <= 60
    # Each key has its own bucket: another tenant's key, from the same address, is served.
    assert models(charlies).status_code == 200


def test_it_limits_wrong_keys_per_client_address_and_spares_valid_keys(world, settings) -> None:
    settings.API_BAD_KEY_RATE_PER_MINUTE, settings.API_BAD_KEY_RATE_BURST = 1, 2
    wrong = "dsw-" + "x" * 40
    assert [models(wrong).status_code for _ in range(2)] == [401, 401]
    refused = models(wrong)
    assert_openai_error(refused, 429, "rate_limit_exceeded")
    assert int(refused["Retry-After"]) >= 1
    assert models(wrong, address="10.0.0.2").status_code == 401  # another address has its own bucket
    # A valid key behind the same (shared) address keeps working.
    assert models(make_key(world.tenant_a, world.alice)).status_code == 200


def test_it_limits_chat_completions_too(world, settings) -> None:
    settings.API_RATE_PER_MINUTE, settings.API_RATE_BURST = 1, 1
    key = make_key(world.tenant_a, world.alice)
    client = Client(REMOTE_ADDR="10.0.0.1")
    url = reverse("openai:chat_completions")
    first = client.post(url, "{}", content_type="application/json", headers=bearer(key))
    assert first.status_code == 400  # allowed through to validation
    second = client.post(url, "{}", content_type="application/json", headers=bearer(key))
    assert_openai_error(second, 429, "rate_limit_exceeded")
