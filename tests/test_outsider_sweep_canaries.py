"""Outsider sweep, part 2: tenant B's canaries never come back to tenant A's searches.

Tenant B's documents (ingested by the real pipeline), conversation titles, messages, user names,
knowledge base names, API key names and its tenant name are canaries. Tenant A asks for each of
them, verbatim: the retrieval service (hybrid search, and its vector and full-text halves, with B's
knowledge base ids and even B's tenant id passed in), the chat turn's retrieval path as A's turn
runs it (`chat.turns.message_generate`, its prompt caught by a scripted OpenAI-compatible server,
with B's knowledge bases smuggled into A's conversation), every page and REST endpoint that reads a
query string (audit trail and its CSV and JSON-lines exports included), and /v1 with A's keys.

A page may echo the query it was given. So each request is sent twice, with the canaries and with
control strings of the same shape that exist nowhere; a canary leaks when it turns up more often
than its control does (and any text of B that was not asked for leaks at once).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from audit.services import actor_for
from chat import services as chat_services
from chat.models import Conversation, ConversationKnowledgeBase, Message
from inference import runtime
from inference.tests.scripted_openai import Script, scripted_server
from knowledge.chunk_store import text_search, vector_search
from knowledge.retrieval import retrieve
from knowledge.selectors import embedding_model_id, knowledge_base_ids_allowed
from tenants.models import Role
from tenants.rls import tenant_context
from tests.outsider_sweep import (
    ROLES,
    Ledger,
    Tenantry,
    body_of,
    cross_tenant_references,
    fill,
    off_the_event_loop,
    routes,
    send,
    session_client,
    turn_settle,
)

pytestmark = pytest.mark.django_db(transaction=True)

# Query-string parameters a list or search view might read; each gets a canary.
SEARCH_PARAMS = ("q", "search", "actor", "action", "target", "term", "name", "title", "username")


class Echoes:
    """Counts tenant B's texts in an answer against the control strings in the control answer."""

    def __init__(self, b: Tenantry) -> None:
        self.b = b
        self.control_label = b.label.replace("bcanary", "bcontrl", 1)
        assert self.control_label != b.label and len(self.control_label) == len(b.label)

    def control(self, text: str) -> str:
        return text.replace(self.b.label, self.control_label)

    def leaks(self, answer: str, control_answer: str) -> list[str]:
        found = [t for t in self.b.canaries if answer.count(t) > control_answer.count(self.control(t))]
        if answer.count(self.b.label) > control_answer.count(self.control_label):
            found.append(f"{self.b.label}… (a fragment)")
        return found


@off_the_event_loop
def test_it_returns_no_canary_of_tenant_b_to_tenant_a(outsiders, settings) -> None:
    a, b = outsiders
    settings.API_RATE_BURST = 10_000
    echoes = Echoes(b)
    _retrieval_service(a, b)
    _pages(a, b, echoes)
    # Last: A's employee types B's canaries into chats of her own, which then show them to her.
    _chat_turn(a, b, echoes, settings)
    _positive_controls(b)


def _retrieval_service(a: Tenantry, b: Tenantry) -> None:
    ledger = Ledger("canaries: the retrieval service, as tenant A, for each canary of B", "leaks")
    queries = b.canaries
    vectors = runtime.get_embedder().embed(queries)
    model = embedding_model_id()
    b_kbs, a_kbs = b.ids["knowledge_base_id"], a.ids["knowledge_base_id"]
    employee = a.memberships[Role.EMPLOYEE]
    for query, vector in zip(queries, vectors, strict=True):
        searches: dict[str, Any] = {
            "retrieve(A, A's and B's knowledge bases)": lambda q=query, v=vector: retrieve(
                tenant_id=a.tenant.pk, knowledge_base_ids=a_kbs + b_kbs, query=q, embedding=v, model=model),
            # A caller that passes the wrong tenant: row-level security still shows A's rows only.
            "retrieve(B's tenant id, B's knowledge bases)": lambda q=query, v=vector: retrieve(
                tenant_id=b.tenant.pk, knowledge_base_ids=b_kbs, query=q, embedding=v, model=model),
            "text_search(B)": lambda q=query: text_search(tenant_id=b.tenant.pk, knowledge_base_ids=b_kbs, query=q,
                                                          model=model, k=30),
            "vector_search(B)": lambda v=vector: vector_search(tenant_id=b.tenant.pk, knowledge_base_ids=b_kbs,
                                                               embedding=v, model=model, k=30),
        }
        for name, search in searches.items():
            with tenant_context(a.tenant.pk, employee.user_id):
                results = search()
            ledger.attempts += 1
            for result in results:
                if isinstance(result, tuple):  # (chunk id, score) from the two halves: any row of B is a leak
                    ledger.findings.append(f"{name} for {query!r}: chunk {result[0]}")
                elif result.knowledge_base_id in b_kbs or b.label in f"{result.text} {result.document_title} {result.heading}":
                    ledger.findings.append(f"{name} for {query!r}: passage {result.chunk_id} of B")
        # Outside any tenant context, the tables read as empty.
        ledger.attempts += 1
        if retrieve(tenant_id=b.tenant.pk, knowledge_base_ids=b_kbs, query=query, embedding=vector, model=model):
            ledger.findings.append(f"retrieve without a tenant context for {query!r} returned passages")
    for role in ROLES:
        with tenant_context(a.tenant.pk):
            allowed = knowledge_base_ids_allowed(a.memberships[role], b_kbs)
        ledger.attempts += 1
        if allowed:
            ledger.findings.append(f"knowledge_base_ids_allowed gives A's {role} B's knowledge bases {allowed}")
    ledger.report()
    assert not ledger.findings, "\n".join(ledger.findings)


def _chat_turn(a: Tenantry, b: Tenantry, echoes: Echoes, settings: Any) -> None:
    """A's employee asks the canaries in a conversation that B's knowledge bases were smuggled into
    (a row no service would write, as a bug elsewhere might); the turn runs as the gpu worker runs it,
    against a scripted OpenAI-compatible server that records the prompt it was sent."""
    ledger = Ledger("canaries: A's chat turn retrieval path (chat.turns.message_generate), prompt and citations", "leaks")
    employee = a.memberships[Role.EMPLOYEE]
    actor = actor_for(user_id=employee.user_id, role=employee.role)
    with scripted_server(Script(chunks=["An answer."])) as (url, script):
        settings.INFERENCE_BACKENDS = [{"name": "outsider-canaries", "base_url": url, "model": "scripted-model",
                                        "retries": 0, "timeouts": {"connect_s": 2, "first_token_s": 10,
                                                                   "idle_s": 10, "total_s": 30}}]
        prompts: dict[str, str] = {}
        cited = 0
        for question in (b.canary("sharedheading"), b.canary("shareddoctext"), b.canary("privatedoctext"),
                         echoes.control(b.canary("shareddoctext"))):
            with tenant_context(a.tenant.pk):
                conversation = chat_services.conversation_create(user=employee.user, tenant=a.tenant, actor=actor)
                kept = chat_services.conversation_set_knowledge_bases(
                    conversation=conversation, knowledge_base_ids=a.ids["knowledge_base_id"] + b.ids["knowledge_base_id"],
                    membership=employee, actor=actor)
                if set(kept) & set(b.ids["knowledge_base_id"]):
                    ledger.findings.append(f"conversation_set_knowledge_bases kept B's {kept}")
                ConversationKnowledgeBase.objects.bulk_create(
                    ConversationKnowledgeBase(tenant=a.tenant, conversation=conversation, knowledge_base_id=kb)
                    for kb in b.ids["knowledge_base_id"])
                _, reply = chat_services.message_submit(conversation=conversation, text=question, actor=actor)
            reply = turn_settle(reply)
            ledger.attempts += 1
            if reply.status != Message.Status.DONE:
                ledger.findings.append(f"the turn for {question!r} ended {reply.status}: {reply.error}")
            prompts[question] = "\n".join(m["content"] for m in script.chat_requests[-1]["messages"])
            cited += len(reply.citations)
            for citation in reply.citations:
                if citation["knowledge_base_id"] in b.ids["knowledge_base_id"] or b.label in str(citation):
                    ledger.findings.append(f"the turn for {question!r} cites B: {citation}")
        assert len(script.chat_requests) == 4
    # The smuggled rows are what the IDOR sweep's cross-tenant check looks for: it sees them.
    if not any(f.startswith("chat_conversationknowledgebase.") for f in cross_tenant_references()):
        ledger.findings.append("cross_tenant_references() missed the smuggled rows")
    control = prompts.pop(echoes.control(b.canary("shareddoctext")))
    for question, prompt in prompts.items():
        if found := echoes.leaks(prompt, control.replace(echoes.control(b.canary("shareddoctext")),
                                                         echoes.control(question))):
            ledger.findings.append(f"the prompt for {question!r} holds {found}")
    ledger.extra["a_passages_cited"] = cited  # A's own knowledge base answered: retrieval ran
    ledger.report()
    assert cited, "the turns retrieved nothing at all, so they proved nothing"
    assert not ledger.findings, "\n".join(ledger.findings)


def _search_query(b: Tenantry, echoes: Echoes, offset: int, *, control: bool) -> dict[str, str]:
    canaries = b.canaries
    query = {param: canaries[(offset + i) % len(canaries)] for i, param in enumerate(SEARCH_PARAMS)}
    return {k: echoes.control(v) for k, v in query.items()} if control else query


def _pages(a: Tenantry, b: Tenantry, echoes: Echoes) -> None:
    """Every GET route, filled with A's own ids, as every user of A (admin as A's owner, the only one
    it lets in), each search parameter a canary of B; then /v1 with A's keys."""
    ledger = Ledger("canaries: every page, REST endpoint and export of tenant A, queried with B's canaries", "leaks")
    clients = {role: session_client(a.users[role]) for role in ROLES}
    for route in routes():
        urls = fill(route, a.ids) or []
        if route.bearer:
            continue
        for role in (Role.OWNER,) if route.route.startswith("admin/") else ROLES:
            for url in urls:
                offset = ledger.attempts
                answer = send(clients[role], "get", url, data=_search_query(b, echoes, offset, control=False))
                if answer.status_code == 405:  # a POST-only route: nothing to search
                    break
                ledger.record(answer)
                if answer.status_code == 403 and b.label not in body_of(answer):
                    break  # the role may not use this page at all
                if b.label not in body_of(answer):
                    continue  # nothing of B at all, not even the query: no control needed
                ledger.count("echoes_compared")
                control = send(clients[role], "get", url, data=_search_query(b, echoes, offset, control=True))
                if found := echoes.leaks(body_of(answer), body_of(control)):
                    ledger.findings.append(f"{role} GET {url}: {answer.status_code} shows {found}")
    for key_role, key in a.api_keys.items():
        client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
        for url in ["/v1/models", *[f"/v1/models/deepseek-web:kb:{i}" for i in a.ids["knowledge_base_id"]]]:
            offset = ledger.attempts
            answer = client.get(url, _search_query(b, echoes, offset, control=False))
            ledger.record(answer)
            if b.label not in body_of(answer):
                continue
            control = client.get(url, _search_query(b, echoes, offset, control=True))
            if found := echoes.leaks(body_of(answer), body_of(control)):
                ledger.findings.append(f"{key_role} key GET {url}: shows {found}")
    ledger.report()
    assert ledger.statuses[200] > 50  # the pages answered, the exports among them
    assert not ledger.findings, "\n".join(ledger.findings)


def _positive_controls(b: Tenantry) -> None:
    """The same searches find the canaries in tenant B itself: the sweep could have seen a leak."""
    query = b.canary("shareddoctext")
    with tenant_context(b.tenant.pk):
        passages = retrieve(tenant_id=b.tenant.pk, knowledge_base_ids=b.ids["knowledge_base_id"], query=query,
                            embedding=runtime.get_embedder().embed([query])[0], model=embedding_model_id())
    assert any(query in p.text for p in passages)
    compliance = session_client(b.users[Role.COMPLIANCE])
    export = body_of(compliance.get("/audit/export.csv"))
    assert b.canary("titleemployee") in export and b.users[Role.OWNER].username in export
    with tenant_context(b.tenant.pk):
        assert Conversation.objects.filter(title=b.canary("titleemployee")).exists()
