"""The REST API against its own OpenAPI schema, on the live server: schemathesis generates valid and
invalid requests for every operation of /api/schema/ and checks each answer (no 5xx, documented
status codes, content types and bodies, auth not ignored, invalid data refused).

Issue 12, what to build 9. Signed in as a knowledge admin of tenant A, with a knowledge base and a
document of A's own, so the generated requests reach the success paths as well as the refusals.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis
from django.core.management import call_command
from django.test import Client
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import CheckFunction, positive_data_acceptance
from schemathesis.core.result import Ok

from knowledge.models import Document, KnowledgeBase
from tenants.rls import tenant_context

pytestmark = pytest.mark.django_db(transaction=True)

# Examples per operation and run (12 runs in all): about 20 s on a 2-core machine.
EXAMPLES = 50
# Django accepts any well-formed CSRF secret as the cookie when the header carries the same one.
CSRF = "schemathesisschemathesisschemat1"


@pytest.fixture
def objects(world) -> dict[str, int]:
    with tenant_context(world.tenant_a.pk):
        kb = KnowledgeBase.objects.create(tenant=world.tenant_a, name="Handbook")
        document = Document.objects.create(tenant=world.tenant_a, knowledge_base=kb, name="a.txt", title="a",
                                           status="failed", stored_name="")
    return {"knowledge_base_id": kb.pk, "document_id": document.pk}


def _session_cookies(user: Any) -> dict[str, str]:
    client = Client()
    client.force_login(user)
    return {"sessionid": client.cookies["sessionid"].value, "csrftoken": CSRF}


def _signed_in(user: Any) -> requests.Session:
    session = requests.Session()
    for name, value in _session_cookies(user).items():
        session.cookies.set(name, value)
    return session


def _check_every_case(strategy: Any, excluded: list[CheckFunction]) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case: Any) -> None:
        case.call_and_validate(timeout=30, excluded_checks=excluded)

    check()


def test_it_generates_a_valid_schema_without_warnings(tmp_path) -> None:
    # drf-spectacular warns where it must guess (an unannotated view, a field it cannot type).
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))


def test_it_serves_the_openapi_schema_to_signed_in_users_only(asgi_server, world) -> None:
    anonymous = requests.get(f"{asgi_server}/api/schema/", params={"format": "json"}, timeout=30)
    assert anonymous.status_code == 403 and anonymous.json() == {
        "detail": "Authentication credentials were not provided."}
    schema = _signed_in(world.erin).get(f"{asgi_server}/api/schema/", params={"format": "json"}, timeout=30).json()
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) == {"/api/v1/knowledge-bases/", "/api/v1/knowledge-bases/{knowledge_base_id}/documents/",
                                    "/api/v1/documents/{document_id}/"}


def test_it_answers_every_generated_request_as_its_schema_says(asgi_server, world, objects) -> None:
    cookies = _session_cookies(world.erin)
    raw = requests.get(f"{asgi_server}/api/schema/", params={"format": "json"}, cookies=cookies, timeout=30).json()
    schema = schemathesis.openapi.from_dict(raw)
    schema.config.update(base_url=asgi_server)
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results) == 5
    for operation in operations:
        own_ids = {name: value for name, value in objects.items() if f"{{{name}}}" in operation.path}
        # Invalid requests need something to make invalid besides the fixed auth: an id or a body.
        upload = operation.method.upper() == "POST"
        invalid = own_ids or upload
        # Whether an upload is accepted depends on each file's name and bytes (its format), which a
        # schema cannot say: a schema-valid upload may be refused with each file's reason (400).
        excluded = [positive_data_acceptance] if upload else []
        # Valid requests name A's own objects, so they reach the success paths, and then ids of
        # their own (unknown, or past PostgreSQL's bigint); invalid ones make up everything.
        runs: list[tuple[GenerationMode, dict[str, int] | None]] = [(GenerationMode.POSITIVE, own_ids)]
        if own_ids:
            runs.append((GenerationMode.POSITIVE, None))
        if invalid:
            runs.append((GenerationMode.NEGATIVE, None))
        for mode, path_parameters in runs:
            # The session's cookies are the schema's cookieAuth: schemathesis sends them, and leaves
            # them out itself to check that the API then refuses.
            strategy = operation.as_strategy(mode, cookies=cookies, headers={"X-CSRFToken": CSRF},
                                             path_parameters=path_parameters or None)
            _check_every_case(strategy, excluded)
