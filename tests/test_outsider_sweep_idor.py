"""Outsider sweep, part 1: insecure direct object references, on every URL pattern of the project.

Every route found by walking Django's resolver (chat, /knowledge/, /settings/, /audit/, the REST
API under /api/, the OpenAI-compatible /v1/, and Django admin, which tenant owners reach: it is not
for superusers only) gets each of its path parameters filled with tenant B's ids, and is requested
by every user of tenant A with GET and every unsafe method it accepts, with a valid CSRF token so
CSRF is never what refuses it. A leak is any answer (or the page a redirect leads to) that shows a
canary of tenant B, or any change to B's rows as the owner role reads them. /v1 is swept again
with tenant A's API keys. Last, every unsafe route is pointed at A's own objects with B's ids in
the body (a knowledge base of B for A's conversation, a user of B for A's key or membership...):
nothing of B may change, and no row of A may end up referring to B's rows or users.

A route the walker cannot fill must be listed in `UNFILLED` with why.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from chat.models import Conversation, Message
from chat.websocket_urls import websocket_urlpatterns
from tenants.models import Role, Tenant
from tenants.rls import tenant_context
from tests.outsider_sweep import (
    ID_KEYS,
    ROLES,
    Ledger,
    Tenantry,
    body_of,
    canaries_in,
    changed,
    cross_tenant_references,
    fill,
    followed,
    form_body,
    is_csrf_refusal,
    off_the_event_loop,
    query_of,
    routes,
    row_snapshots,
    send,
    session_client,
)

# Routes the walker cannot fill, each with why. Empty today: every parameter of every route has a
# filler (outsider_sweep._fills). A new parameter without one fails the inventory test below.
UNFILLED: dict[str, str] = {}


@pytest.mark.django_db
def test_it_fills_every_route_or_lists_why() -> None:
    """A new route whose parameters the walker cannot fill fails here until it gets a filler or a
    line in UNFILLED; so does a line in UNFILLED whose route is gone."""
    ids = {key: [1] for key in ID_KEYS}
    found = routes()
    unfilled = [r.route for r in found if r.route not in UNFILLED and fill(r, ids) is None]
    assert not unfilled, f"routes the outsider sweep cannot fill (add a filler, or list them in UNFILLED): {unfilled}"
    assert not set(UNFILLED) - {r.route for r in found}, "UNFILLED lists routes that no longer exist"
    assert len(found) > 80  # the walker went into every include, admin's model pages among them
    # The one WebSocket route is swept in test_outsider_sweep_csrf.py; a new one needs its own case there.
    assert [str(p.pattern) for p in websocket_urlpatterns] == ["ws/chat/<int:conversation_id>/"]


def _quota_spent(a: Tenantry) -> None:
    """Tenant A may send no more messages: a /v1 request that got past an access check by mistake is
    refused at its last step (429) instead of queueing a turn that no worker answers."""
    with tenant_context(a.tenant.pk):
        Tenant.objects.filter(pk=a.tenant.pk).update(quota_messages_per_user_day=1, quota_tokens_per_month=1)
        for user in a.users.values():
            conversation = Conversation.objects.create(tenant=a.tenant, user=user, title="quota")
            Message.objects.create(tenant=a.tenant, conversation=conversation, role=Message.Role.USER, content="q")


def _v1_body(b: Tenantry) -> dict[str, object]:
    return {"model": f"deepseek-web:kb:{b.ids['knowledge_base_id'][0]}", "user": str(b.ids["user_id"][0]),
            "messages": [{"role": "user", "content": f"Summarise conversation {b.ids['conversation_id'][0]}"}]}


def _check(ledger: Ledger, client: Client, b: Tenantry, what: str, response: Any) -> None:
    """Counts one answer; notes a leak, a 5xx, or a CSRF refusal (which would make the attempt vacuous)."""
    ledger.record(response)
    status = response.status_code
    if status >= 500:
        ledger.findings.append(f"{what}: {status}")
    if is_csrf_refusal(response):
        ledger.findings.append(f"{what}: refused by CSRF, so the attempt proved nothing")
    if found := canaries_in(body_of(response), b):
        ledger.findings.append(f"{what}: {status} shows {found}")
    after = followed(client, response)
    if after is not None and (found := canaries_in(body_of(after), b)):
        ledger.findings.append(f"{what}: redirect to {response['Location']} shows {found}")


@pytest.mark.django_db(transaction=True)
@off_the_event_loop
def test_it_leaks_nothing_of_tenant_b_to_tenant_a_on_any_route(outsiders, settings) -> None:
    a, b = outsiders
    # The rate limits of /v1 have their own tests; here they would only turn refusals into 429s.
    settings.API_RATE_BURST = settings.API_BAD_KEY_RATE_BURST = 10_000
    accepted = _sessions_sweep(a, b)
    _quota_spent(a)  # after the session sweep, whose owner's settings form set A's quotas
    _api_keys_sweep(a, b, accepted)
    _bodies_sweep(a, b, accepted)  # last: it deletes A's own objects on the way


def _sessions_sweep(a: Tenantry, b: Tenantry) -> dict[str, list[str]]:
    """Returns the methods each route accepts (those not answered 405)."""
    ledger = Ledger("IDOR, session of each user of tenant A, tenant B's ids", "leaks")
    clients = {role: session_client(a.users[role]) for role in ROLES}
    # The sweep of admin is meaningful: tenant A's owner is let in (it is not for superusers only).
    assert clients[Role.OWNER].get("/admin/").status_code == 200
    swept_routes = 0
    accepted_methods: dict[str, list[str]] = {}
    with row_snapshots(b) as snapshot:
        for route in routes():
            if route.route in UNFILLED:
                continue
            urls = fill(route, b.ids)
            assert urls is not None, f"{route.route}: no filler (test_it_fills_every_route_or_lists_why)"
            swept_routes += 1
            before = snapshot()
            accepted: list[str] | None = None
            for role in ROLES:
                client = clients[role]
                if route.route.startswith("admin/") and role != Role.OWNER:
                    # Django admin turns away a user without admin access before it reads the method
                    # or the object: once that is seen, the rest of the route is the same answer.
                    response = send(client, "get", urls[0], data=query_of(b))
                    _check(ledger, client, b, f"{role} GET {urls[0]}", response)
                    if response.status_code == 302 and response["Location"].startswith("/admin/login/"):
                        ledger.count("turned_away_by_admin")
                        continue
                for url in urls:
                    tried = []
                    for method in accepted or route.methods:
                        data = (_v1_body(b) if route.bearer and method != "get" else
                                query_of(b) if method == "get" else form_body(b, ledger.attempts))
                        response = send(client, method, url, data=data, json_body=route.bearer and method != "get")
                        _check(ledger, client, b, f"{role} {method.upper()} {url}", response)
                        if response.status_code != 405:
                            tried.append(method)
                    accepted = accepted or tried
                    if "_auth_user_id" not in client.session:  # a logout route ended the session
                        client.force_login(a.users[role])
            accepted_methods[route.route] = accepted or []
            if tables := changed(before, snapshot()):
                ledger.findings.append(f"{route.route}: tenant B's rows changed in {tables}")
    ledger.extra |= {"routes": swept_routes, "listed_unfilled": len(UNFILLED)}
    ledger.report()
    assert ledger.attempts > 400
    assert not ledger.findings, "\n".join(ledger.findings)
    # The canaries are findable: tenant B's own employee sees hers on the same pages.
    own = session_client(b.users[Role.EMPLOYEE])
    page = body_of(own.get(reverse("chat:conversation_detail", args=[b.ids["conversation_id"][0]])))
    assert b.canary("titleemployee") in page and b.canary("answeremployee") in page
    # And the snapshots see a change: hers.
    with row_snapshots(b) as snapshot:
        before = snapshot()
        own.post(reverse("chat:conversation_rename", args=[b.ids["conversation_id"][0]]), {"title": "renamed by B"})
        assert {"chat_conversation", "audit_auditevent"} <= set(changed(before, snapshot()))
    return accepted_methods


def _api_keys_sweep(a: Tenantry, b: Tenantry, accepted: dict[str, list[str]]) -> None:
    ledger = Ledger("IDOR, /v1 with each API key of tenant A, tenant B's ids", "leaks")
    v1_routes = [r for r in routes() if r.bearer]
    assert {r.name for r in v1_routes} == {"openai:model_list", "openai:model_detail", "openai:chat_completions"}
    with row_snapshots(b) as snapshot:
        before = snapshot()
        for role, key in a.api_keys.items():
            client = Client(HTTP_AUTHORIZATION=f"Bearer {key}", raise_request_exception=False)
            for route in v1_routes:
                for url in fill(route, b.ids) or []:
                    for method in accepted[route.route]:
                        for stream in (False, True) if method == "post" else (False,):
                            data = {**_v1_body(b), "stream": stream} if method != "get" else query_of(b)
                            response = send(client, method, url, data=data, json_body=method != "get")
                            _check(ledger, client, b, f"{role} key {method.upper()} {url}", response)
                            # B's knowledge base is no model of A's: 404.
                            expected = (200,) if route.name == "openai:model_list" else (404,)
                            if response.status_code not in expected:
                                ledger.findings.append(f"{role} key {method.upper()} {url}: {response.status_code}"
                                                       f" {body_of(response)[:200]}")
            # And tenant B's key ids, names and models are nowhere in A's model list.
            listing = json.loads(body_of(client.get("/v1/models")))
            if {m["id"] for m in listing["data"]} & {f"deepseek-web:kb:{i}" for i in b.ids["knowledge_base_id"]}:
                ledger.findings.append(f"{role} key: /v1/models lists tenant B's knowledge bases")
        if tables := changed(before, snapshot()):
            ledger.findings.append(f"/v1: tenant B's rows changed in {tables}")
    ledger.report()
    assert ledger.attempts >= 20
    assert not ledger.findings, "\n".join(ledger.findings)
    # B's own key does see its knowledge base: the model ids above were real.
    own = Client(HTTP_AUTHORIZATION=f"Bearer {b.api_keys[Role.EMPLOYEE]}")
    assert own.get(f"/v1/models/deepseek-web:kb:{b.ids['knowledge_base_id'][0]}").status_code == 200


def _bodies_sweep(a: Tenantry, b: Tenantry, accepted: dict[str, list[str]]) -> None:
    ledger = Ledger("IDOR, A's own objects in the path, tenant B's ids in the body", "leaks")
    clients = {role: session_client(a.users[role]) for role in ROLES}
    # Deleting and deactivating routes last, so the others still find A's objects.
    ordered = sorted((r for r in routes() if not r.bearer and r.route not in UNFILLED),
                     key=lambda r: any(word in r.route for word in ("delete", "active", "revoke", "logout")))
    with row_snapshots(b) as snapshot:
        before = snapshot()
        for route in ordered:
            # Django admin bounces every user of A but the owner before it reads a body.
            for role in (Role.OWNER,) if route.route.startswith("admin/") else ROLES:
                for url in (fill(route, a.ids) or [])[:1]:
                    for method in accepted[route.route]:
                        if method == "get":
                            continue
                        response = send(clients[role], method, url, data=form_body(b, ledger.attempts))
                        _check(ledger, clients[role], b, f"{role} {method.upper()} {url}", response)
                if "_auth_user_id" not in clients[role].session:
                    clients[role].force_login(a.users[role])
        if tables := changed(before, snapshot()):
            ledger.findings.append(f"tenant B's rows changed in {tables}")
    ledger.findings += cross_tenant_references()
    ledger.report()
    assert ledger.attempts > 100
    assert not ledger.findings, "\n".join(ledger.findings)
