"""Every error under /api/ and /v1/ answers in that API's JSON format (deepseek_web/api_errors.py):
unknown paths, refused methods, content negotiation, unreadable bodies, and a failing view with
DEBUG on, whose technical 500 page would otherwise reach the client. Issue 12, finding 11."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

OPENAI_KEYS = {"message", "type", "code", "param"}


def _detail(response) -> str:
    assert response["Content-Type"] == "application/json", response.content[:300]
    body = response.json()
    assert set(body) == {"detail"} and body["detail"]
    return str(body["detail"])


def _openai(response) -> dict[str, Any]:
    assert response["Content-Type"] == "application/json", response.content[:300]
    error = response.json()["error"]
    assert set(error) == OPENAI_KEYS and error["message"]
    return dict(error)


@pytest.fixture
def erin(world) -> Client:
    client = Client()
    client.force_login(world.erin)
    return client


def test_it_answers_unknown_api_paths_in_each_apis_format(erin, settings) -> None:
    settings.DEBUG = True  # Django's technical 404 page is what `./dsw run` would show
    assert erin.get("/api/v1/nothing-here/").status_code == 404
    assert "Invalid URL (GET /api/v1/nothing-here/)" in _detail(erin.get("/api/v1/nothing-here/"))
    response = Client().post("/v1/embeddings", "{}", content_type="application/json")
    assert response.status_code == 404
    assert _openai(response)["type"] == "invalid_request_error"
    assert _openai(Client().get("/v1"))["message"] == "Invalid URL (GET /v1)."
    # Outside the APIs, pages stay pages.
    assert Client().get("/nothing-here/")["Content-Type"].startswith("text/html")


def test_it_refuses_what_the_rest_api_cannot_do_in_json(world, erin) -> None:
    from knowledge.models import KnowledgeBase
    from tenants.rls import tenant_context

    with tenant_context(world.tenant_a.pk):
        kb = KnowledgeBase.objects.create(tenant=world.tenant_a, name="Handbook")
    response = erin.put("/api/v1/knowledge-bases/", "{}", content_type="application/json")
    assert response.status_code == 405 and "PUT" in _detail(response) and "GET" in response["Allow"]
    response = erin.get("/api/v1/knowledge-bases/", HTTP_ACCEPT="text/html")
    assert response.status_code == 406 and _detail(response)
    response = erin.post(f"/api/v1/knowledge-bases/{kb.pk}/documents/", '{"files": []',
                         content_type="application/json")
    assert response.status_code == 415 and _detail(response)


def test_it_answers_a_failing_view_in_json_even_with_debug_on(settings) -> None:
    settings.DEBUG = True
    settings.ROOT_URLCONF = "deepseek_web.tests.urls_raising"
    client = Client(raise_request_exception=False)
    response = client.get("/api/v1/failing/")
    assert response.status_code == 500 and "logged" in _detail(response)
    assert b"RuntimeError" not in response.content  # nothing of the traceback
    response = client.post("/v1/failing", "{}", content_type="application/json")
    assert response.status_code == 500 and _openai(response)["type"] == "server_error"
    assert b"RuntimeError" not in response.content


def test_it_refuses_an_api_path_without_its_slash_in_json_even_with_debug_on(erin, settings) -> None:
    """CommonMiddleware would redirect it (dropping the body), or with DEBUG on raise a 500 page for
    a POST: the REST API's paths are exact."""
    settings.DEBUG = True
    erin.raise_request_exception = False
    for method in ("post", "delete", "get"):
        response = getattr(erin, method)("/api/v1/knowledge-bases")
        assert response.status_code == 404 and "Invalid URL" in _detail(response), method
    response = erin.post("/api/schema")
    assert response.status_code == 404 and _detail(response)
