"""Outsider sweep, part 4: cross-site scripting payloads in every field a user controls.

Tenant A's users put the payloads of `XSS_PAYLOADS` everywhere they can, through the product's own
endpoints: conversation titles (the rename form, answered as htmx would ask), a message sent over
the chat WebSocket, the model's output (a scripted OpenAI-compatible server streams the payloads as
the answer of a real turn, whose sources are documents with hostile names and contents), uploaded
documents' names and contents (Markdown and HTML, through the real pipeline), knowledge base names
and descriptions, API key names, URL sources, user names through the owner's console (refused:
Django's user-name rule allows no markup, so accounts with such names are also made outside it, to
check the pages that list them), the User-Agent (it goes into the audit trail) and every query
string. Then every page that can show them is rendered, by walking every GET route with A's own ids
as every user of A, and every HTML answer, WebSocket frame and partial is scanned for markup a
payload made (`outsider_sweep.injected_markup`): none may appear.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils.html import escape
from websockets.sync.client import connect
from websockets.typing import Origin

from audit.models import AuditEvent
from audit.services import SYSTEM
from chat.models import Conversation, Message
from console.services import membership_create
from inference.tests.scripted_openai import Script, scripted_server
from knowledge.models import Document, KnowledgeBase
from openai_api.models import ApiKey
from tenants.models import Membership, Role
from tenants.rls import tenant_context
from tests.outsider_sweep import (
    ROLES,
    XSS_MARKER,
    XSS_PAYLOADS,
    Ledger,
    Tenantry,
    body_of,
    document_settle,
    fill,
    injected_markup,
    is_html,
    multipart,
    off_the_event_loop,
    routes,
    run_token,
    send,
    session_client,
    tenantry_build,
    turn_settle,
)

pytestmark = pytest.mark.django_db(transaction=True)

USER_AGENT = XSS_PAYLOADS[4]
ALL = "\n\n".join(XSS_PAYLOADS)
MODEL_CHUNKS = [f"{p}\n\n" for p in XSS_PAYLOADS]  # what the scripted model streams, chunk by chunk
DOCUMENT_MD = "\n\n".join(["# " + XSS_PAYLOADS[0], *XSS_PAYLOADS, "## " + XSS_PAYLOADS[3], XSS_PAYLOADS[5]])
DOCUMENT_HTML = ("<html><head><title>&lt;script&gt;alert('XSSMARK2')&lt;/script&gt;</title></head><body>"
                 "<h1>&lt;img src=x onerror=alert('XSSMARK1')&gt;</h1>"
                 "<p><a href=\"javascript:alert('XSSMARK3')\">a link</a> &quot;&gt;&lt;svg onload=alert('XSSMARK4')&gt;</p>"
                 "<script>alert('XSSMARK2')</script></body></html>")


class Scan:
    """Counts what was scanned and what a payload injected."""

    def __init__(self) -> None:
        self.ledger = Ledger("XSS: every page, partial and frame that shows a payload, as each user of tenant A", "injections")

    def html(self, what: str, html: str) -> None:
        self.ledger.attempts += 1
        if XSS_MARKER in html or "javascript:" in html:
            self.ledger.count("pages_showing_a_payload")
        self.ledger.findings += [f"{what}: {found}" for found in injected_markup(html)]

    def response(self, what: str, response: Any) -> None:
        self.ledger.statuses[response.status_code] += 1
        if response.status_code >= 500:
            self.ledger.findings.append(f"{what}: {response.status_code}")
        if is_html(response):
            self.html(what, body_of(response))


def _client(user: User) -> Any:
    client = session_client(user)
    client.defaults["HTTP_USER_AGENT"] = USER_AGENT
    return client


def _plant(a: Tenantry, scan: Scan) -> dict[str, int]:
    """Puts the payloads everywhere through the product's endpoints; returns ids the walk needs."""
    employee, ka, owner = (_client(a.users[r]) for r in (Role.EMPLOYEE, Role.KNOWLEDGE_ADMIN, Role.OWNER))
    # Conversation titles: a new conversation per payload, renamed as the page's htmx form does.
    for payload in XSS_PAYLOADS:
        created = employee.post(reverse("chat:conversation_create"))
        conversation_id = int(created["Location"].rstrip("/").rsplit("/", 1)[1])
        scan.response("rename (htmx)", employee.post(reverse("chat:conversation_rename", args=[conversation_id]),
                                                     {"title": payload}, HTTP_HX_REQUEST="true"))
    # Knowledge bases: names and descriptions, through the create form; then a refused URL source.
    for name in (XSS_PAYLOADS[0], XSS_PAYLOADS[3]):
        response = ka.post(reverse("knowledge:knowledge_base_create"), {
            "name": name, "description": ALL, "access_roles": [r.value for r in Role],
            "chunk_max_tokens": 256, "chunk_overlap_tokens": 32})
        assert response.status_code == 302, body_of(response)[:500]
    with tenant_context(a.tenant.pk):
        kb = KnowledgeBase.objects.get(name=XSS_PAYLOADS[0])
    scan.response("source refused", ka.post(reverse("knowledge:source_create", args=[kb.pk]), {
        "kind": "url", "location": XSS_PAYLOADS[2], "sync_interval_minutes": 60}))
    scan.response("knowledge base refused", ka.post(reverse("knowledge:knowledge_base_create"), {
        "name": XSS_PAYLOADS[1], "description": ALL, "chunk_max_tokens": 1, "chunk_overlap_tokens": 32}))
    # Documents: hostile names and contents, uploaded through the page, ingested by the pipeline.
    body, content_type = multipart([(f"{XSS_PAYLOADS[0]}.md", DOCUMENT_MD.encode()),
                                    (f"{XSS_PAYLOADS[3]}.html", DOCUMENT_HTML.encode()),
                                    (f"{XSS_PAYLOADS[4]}.txt", ALL.encode())])
    scan.response("upload outcomes", ka.post(reverse("knowledge:document_upload", args=[kb.pk]), body,
                                             content_type=content_type))
    scan.response("upload outcomes (htmx)", ka.post(reverse("knowledge:document_upload", args=[kb.pk]), body,
                                                    content_type=content_type, HTTP_HX_REQUEST="true"))
    with tenant_context(a.tenant.pk):
        queued = list(Document.objects.filter(knowledge_base=kb).exclude(status__in=["ready", "failed"]))
    for document in queued:
        document = document_settle(document)
        assert document.status == "ready", document.error
        scan.ledger.notes.append(f"document {document.name!r}: {document.chunk_count} passages")
    # API key names, through the owner's page (the answer shows the new key once).
    for payload in XSS_PAYLOADS:
        scan.response("api key created", owner.post(reverse("apikeys:api_key_create"),
                                                    {"name": payload, "user": a.users[Role.EMPLOYEE].pk}))
    # User names through the owner's console: refused, and the refusal shows the name safely.
    for payload in XSS_PAYLOADS:
        response = owner.post(reverse("console:user_create"), {"username": payload, "password": "Sweep-passw0rd-x",
                                                               "role": "employee"})
        scan.response("console refusal", response)
        if response.status_code != 400:
            scan.ledger.findings.append(f"the console accepted the user name {payload!r}: {response.status_code}")
    # Accounts whose names no form here accepts, made as a shell or a directory sync could: the pages
    # that list members must show them safely too. One of them acts, so the audit trail names it.
    for i, payload in enumerate(XSS_PAYLOADS[:2] + XSS_PAYLOADS[3:5]):
        user = User.objects.create_user(f"{payload[:140]}{i}", password="x")
        membership_create(tenant=a.tenant, user=user, role=Role.EMPLOYEE, actor=SYSTEM)
        if i == 0:
            _client(user).post(reverse("chat:conversation_create"))
    return {"payload_kb": kb.pk}


def _turn_over_the_websocket(asgi_server: str, a: Tenantry, conversation_id: int, session_key: str,
                             scan: Scan) -> None:
    """Submits the payloads over the chat socket of our daphne, then runs the turn as the gpu worker
    would while the socket relays it: the `submitted`, `chunk` and `end` frames carry what the page
    inserts into itself."""
    with connect(asgi_server.replace("http://", "ws://") + f"/ws/chat/{conversation_id}/", origin=Origin(asgi_server),
                 additional_headers={"Cookie": f"sessionid={session_key}", "User-Agent": USER_AGENT},
                 open_timeout=30) as socket:
        socket.send(json.dumps({"type": "submit", "text": ALL, "client_id": "xss"}))
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["type"] != "submitted":
            frames.append(json.loads(socket.recv(timeout=10)))
            assert frames[-1]["type"] != "error", frames[-1]
        with tenant_context(a.tenant.pk):
            reply = Message.objects.get(pk=frames[-1]["message_id"])
        turn_settle(reply)
        while frames[-1]["type"] != "end":
            frames.append(json.loads(socket.recv(timeout=20)))
    end = frames[-1]
    assert end["status"] == "done", end
    assert "".join(f.get("text", "") for f in frames if f["type"] == "chunk") == "".join(MODEL_CHUNKS)
    for frame in frames:
        for key in ("user_html", "reply_html", "html"):
            if key in frame:
                scan.html(f"websocket {frame['type']} frame {key}", frame[key])


def _walk(a: Tenantry, ids: dict[str, list[int]], scan: Scan) -> None:
    """Every GET route filled with A's ids, as every user of A (admin as A's owner), payloads in the
    query string; and the partials htmx asks for."""
    clients = {role: _client(a.users[role]) for role in ROLES}
    query = {"q": XSS_PAYLOADS[0], "actor": XSS_PAYLOADS[3], "target": XSS_PAYLOADS[1], "action": XSS_PAYLOADS[4],
             "next": XSS_PAYLOADS[2], "page": XSS_PAYLOADS[3], "chunk": XSS_PAYLOADS[0]}
    for route in routes():
        if route.bearer:
            continue
        for role in (Role.OWNER,) if route.route.startswith("admin/") else ROLES:
            for url in fill(route, ids) or []:
                response = send(clients[role], "get", url, data=query)
                if response.status_code == 405:
                    break
                scan.response(f"{role} GET {url}", response)
                if response.status_code == 403:
                    break  # the role may not use this page at all: the next objects change nothing
    compliance, ka = clients[Role.COMPLIANCE], clients[Role.KNOWLEDGE_ADMIN]
    scan.response("audit results (htmx)", compliance.get(reverse("audit:event_list"), {"actor": XSS_PAYLOADS[0]},
                                                         HTTP_HX_REQUEST="true"))
    for kb_id in ids["knowledge_base_id"]:
        scan.response("documents (htmx)", ka.get(reverse("knowledge:document_list", args=[kb_id]),
                                                 HTTP_HX_REQUEST="true"))


@off_the_event_loop
def test_it_never_renders_a_payload_as_markup(transactional_db, settings, asgi_server) -> None:
    # The scanner sees each payload when it is markup, and none when it is escaped text.
    assert all(injected_markup(f"<p>{p}</p>") for p in XSS_PAYLOADS if "<" in p)
    assert injected_markup(f'<a href="{XSS_PAYLOADS[2]}">x</a>')
    assert not any(injected_markup(f'<p>{escape(p)}</p><a href="/x" title="{escape(p)}">x</a>') for p in XSS_PAYLOADS)
    a = tenantry_build(f"aside{run_token()}")
    scan = Scan()
    planted = _plant(a, scan)
    employee = a.users[Role.EMPLOYEE]
    # The model's output: a real turn whose answer is the payloads, with the hostile documents as sources.
    with tenant_context(a.tenant.pk):
        conversation = Conversation.objects.create(tenant=a.tenant, user=employee, title="model output")
    client = _client(employee)
    client.post(reverse("chat:conversation_set_knowledge_bases", args=[conversation.pk]),
                {"knowledge_base": [planted["payload_kb"]]})
    with scripted_server(Script(chunks=MODEL_CHUNKS)) as (url, _):
        settings.INFERENCE_BACKENDS = [{"name": "outsider-xss", "base_url": url, "model": "scripted-model",
                                        "retries": 0, "timeouts": {"connect_s": 2, "first_token_s": 10,
                                                                   "idle_s": 10, "total_s": 30}}]
        _turn_over_the_websocket(asgi_server, a, conversation.pk, client.cookies["sessionid"].value, scan)
    with tenant_context(a.tenant.pk):
        ids = {**a.ids,
               "conversation_id": list(Conversation.objects.values_list("pk", flat=True)),
               "knowledge_base_id": list(KnowledgeBase.objects.values_list("pk", flat=True)),
               "document_id": list(Document.objects.values_list("pk", flat=True)),
               "api_key_id": list(ApiKey.objects.values_list("pk", flat=True))[:2],
               "membership_id": list(Membership.objects.values_list("pk", flat=True)),
               # One event of each action that recorded a payload.
               "event_id": list({e.action: e.pk for e in AuditEvent.objects.filter(tenant=a.tenant)
                                 .order_by("seq") if XSS_MARKER in json.dumps(e.payload) + e.user_agent}.values()),
               "user_id": list(Membership.objects.values_list("user_id", flat=True))}
        reply = conversation.messages.filter(role="assistant").get()
    assert XSS_PAYLOADS[1] in reply.content and reply.citations, "the turn did not answer with the payloads"
    _walk(a, ids, scan)
    ledger = scan.ledger
    ledger.report()
    assert ledger.extra.get("pages_showing_a_payload", 0) > 50  # the payloads were on the pages scanned
    assert not ledger.findings, "\n".join(ledger.findings)


# In the page: markup a payload made (an event handler or a script holding a marker, a javascript: URL).
INJECTED_IN_DOM = """
() => {
  const found = [];
  for (const el of document.querySelectorAll('*')) {
    for (const attr of el.attributes) {
      const value = attr.value.replace(/\\s/g, '').toLowerCase();
      if (attr.name.startsWith('on') && attr.value.includes('XSSMARK')) found.push(el.tagName + ' ' + attr.name);
      if (['href', 'src', 'action', 'formaction'].includes(attr.name) && value.startsWith('javascript:')) {
        found.push(el.tagName + ' ' + attr.name + '=' + attr.value);
      }
    }
    if (el.tagName === 'SCRIPT' && el.textContent.includes('XSSMARK')) found.push('SCRIPT ' + el.textContent);
  }
  return found;
}
"""
# Registered before any page script: a blocked inline script or handler means escaping failed and
# only the content security policy stopped it, which counts as a finding too.
WATCH_CSP = """
window.__violations = [];
document.addEventListener('securitypolicyviolation', e => window.__violations.push(e.violatedDirective));
"""


@pytest.mark.browser
def test_it_fires_no_dialog_on_the_chat_page_with_hostile_titles_messages_and_answers(
        world, log_in, asgi_server, page) -> None:
    from playwright.sync_api import expect

    with tenant_context(world.tenant_a.pk):
        conversation = Conversation.objects.create(tenant=world.tenant_a, user=world.alice, title=XSS_PAYLOADS[3])
        question = Message.objects.create(tenant=world.tenant_a, conversation=conversation, role="user", content=ALL)
        Message.objects.create(tenant=world.tenant_a, conversation=conversation, role="assistant", reply_to=question,
                               content=ALL + " [1]", citations=[{
                                   "n": 1, "chunk_id": 1, "document_id": 1, "knowledge_base_id": 1, "page": None,
                                   "document_title": XSS_PAYLOADS[0], "heading": XSS_PAYLOADS[1],
                                   "snippet": XSS_PAYLOADS[3]}])
    ledger = Ledger("XSS in Chromium: the chat page with hostile titles, messages and answers", "injections")
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.add_init_script(WATCH_CSP)

    def inspect(stage: str) -> None:
        ledger.attempts += 1
        ledger.findings += [f"{stage}: injected {f}" for f in page.evaluate(INJECTED_IN_DOM)]
        ledger.findings += [f"{stage}: blocked by the content security policy only: {v}"
                            for v in page.evaluate("window.__violations")]

    log_in(page, asgi_server, "alice", world.password)  # lands on the latest conversation: this one
    expect(page.locator(".msg-assistant .msg-body")).to_contain_text("XSSMARK6")
    inspect("the page as served")
    # Rename it through the page's htmx form, then send the payloads over the socket: the server's
    # answers go into the page through innerHTML.
    page.click(".conv.active summary")
    page.fill(".conv.active input[name=title]", XSS_PAYLOADS[0])
    with page.expect_response(lambda response: "/rename/" in response.url):
        page.click(".conv.active button:has-text('Rename')")
    inspect("after the htmx rename")
    page.fill("#prompt", ALL)
    page.click("#send")
    expect(page.locator(".msg-user")).to_have_count(2)
    inspect("after the socket's submitted frame")
    page.reload()
    expect(page.locator(".msg-user")).to_have_count(2)
    inspect("reloaded")
    ledger.findings += [f"a dialog fired: {m}" for m in dialogs]
    ledger.report()
    assert not ledger.findings, "\n".join(ledger.findings)
    # The payloads are there, as text.
    expect(page.locator(".conv.active .conv-title")).to_have_text(XSS_PAYLOADS[0])
    expect(page.locator(".msg-user").last).to_contain_text(XSS_PAYLOADS[1])
