"""An outsider's security sweep, shared by tests/test_outsider_sweep_*.py.

Two tenants built through the product's own services, each with an owner, a knowledge admin, an
employee and a compliance officer, conversations and messages, a shared and a private knowledge
base with documents ingested by the real pipeline, a URL source, API keys, audit events, a group
and login records. Every text of tenant B carries a canary (`Tenantry.canary`), so a page, an
export or a prompt that shows any of it is caught by a substring search.

Then the tools the sweeps share: a walker over every URL pattern of the project that fills each
path parameter with a tenant's object ids (a route it cannot fill must be listed, with why, in
test_outsider_sweep_idor.UNFILLED, or the inventory test fails); a snapshot of a tenant's rows as the owner role reads them, through
a connection of its own (so a write that the app role's request made is seen as committed);
clients with and without a valid CSRF token; and a scanner that finds markup a payload injected
into an HTML page.
"""

from __future__ import annotations

import functools
import json
import random
import re
import string
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlencode, urlsplit

from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.contrib.contenttypes.models import ContentType
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.utils import timezone
from django.utils.crypto import get_random_string

from audit.models import AuditEvent
from audit.services import SYSTEM, Actor, actor_for
from audit.tests.attacker import superuser_connection
from chat import services as chat_services
from chat.models import Message
from console.services import membership_create, tenant_create
from knowledge.models import Chunk, Document, KnowledgeSource
from knowledge.services.documents import documents_upload
from knowledge.services.knowledge_bases import knowledge_base_create
from knowledge.tests.test_pipeline import run_pipeline
from openai_api.models import ApiKey
from openai_api.services import api_key_create
from tenants.models import Membership, Role, Tenant
from tenants.rls import owner_connection, tenant_context

PASSWORD = "correct-horse-battery"
ROLES = (Role.OWNER, Role.KNOWLEDGE_ADMIN, Role.EMPLOYEE, Role.COMPLIANCE)
UNSAFE_METHODS = ("post", "put", "patch", "delete")
METHODS = ("get", *UNSAFE_METHODS)


def off_the_event_loop(test: Callable[..., None]) -> Callable[..., None]:
    """Runs a test's body in a thread of its own. Once a browser test has run, Playwright keeps an
    event loop running in the test thread, and async_to_sync (logout and role changes close the
    user's sockets through the channel layer) refuses to run beside it: the request would fail."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        def body() -> None:
            try:
                test(*args, **kwargs)
            finally:
                connection.close()

        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(body).result()

    return wrapper


def run_token() -> str:
    """Letters that are not hex digits: a canary never turns up inside a hash or a CSRF token by chance."""
    return "".join(random.choice("ghijklmnopqrstuvwxyz") for _ in range(8))


# ---------------------------------------------------------------------------------- the world


@dataclass
class Tenantry:
    """One tenant as the sweep knows it: its users by role, its objects' ids by path parameter name."""

    label: str  # every text of this tenant starts with it; for tenant B, the canary prefix
    tenant: Tenant
    users: dict[str, User]
    memberships: dict[str, Membership]
    api_keys: dict[str, str]  # role -> plaintext
    ids: dict[str, list[int]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)  # kind -> the text stored, each unique

    def canary(self, kind: str) -> str:
        return f"{self.label}{kind}"

    @property
    def canaries(self) -> list[str]:
        return sorted(self.texts.values())


DOCUMENT = """# {label}heading

{label}doctext is the word that only this organisation's handbook contains.

## Parental leave

Parents get sixteen weeks of paid parental leave, to be taken within the first year.

## Travel

Book flights through the travel desk at least two weeks ahead.
"""


def _role_actor(membership: Membership) -> Actor:
    return actor_for(user_id=membership.user_id, role=membership.role, name=membership.user.get_username())


def tenantry_build(label: str, *, ingest: bool = True) -> Tenantry:
    """A tenant with every kind of object, made by the product's services; `label` starts every text."""
    tenant = tenant_create(name=f"Tenant {label}tenant", slug=f"{label}-org", actor=SYSTEM)
    users: dict[str, User] = {}
    memberships: dict[str, Membership] = {}
    texts: dict[str, str] = {"tenant": f"{label}tenant"}
    for role in ROLES:
        users[role] = User.objects.create_user(f"{label}{role}", password=PASSWORD)
        texts[f"user-{role}"] = users[role].username
        memberships[role] = membership_create(tenant=tenant, user=users[role], role=role, actor=SYSTEM)
    side = Tenantry(label=label, tenant=tenant, users=users, memberships=memberships, api_keys={}, texts=texts)
    ka, employee = memberships[Role.KNOWLEDGE_ADMIN], memberships[Role.EMPLOYEE]
    with tenant_context(tenant.pk):
        shared = knowledge_base_create(tenant=tenant, name=f"{label}kbshared", description=f"{label}kbdescription",
                                       created_by=ka.user, actor=_role_actor(ka))
        private = knowledge_base_create(tenant=tenant, name=f"{label}kbprivate", access_roles=[],
                                        member_ids=[employee.user_id], created_by=ka.user, actor=_role_actor(ka))
        source = KnowledgeSource.objects.create(tenant=tenant, knowledge_base=shared, kind="url",
                                                location=f"https://{label}source.example/")
    texts |= {"kb-shared": shared.name, "kb-description": shared.description, "kb-private": private.name,
              "source": f"{label}source"}
    documents = []
    for kb, kind in ((shared, "shared"), (private, "private")):
        # One transaction: the ingestion tasks are queued when it commits, once the document is ready,
        # so a gpu worker running in this process (tests/conftest.py: gpu_worker) finds nothing to
        # do, rather than writing to the document while a sweep compares its rows.
        with transaction.atomic():
            with tenant_context(tenant.pk):
                [outcome] = documents_upload(
                    knowledge_base=kb, uploaded_by=ka.user, actor=_role_actor(ka),
                    files=[SimpleUploadedFile(f"{label}doc{kind}.md",
                                              DOCUMENT.format(label=f"{label}{kind}").encode())])
            document = run_pipeline(outcome.document) if ingest else outcome.document
        assert not ingest or document.status == "ready", document.error
        documents.append(document)
        texts |= {f"doc-{kind}": f"{label}doc{kind}", f"doctext-{kind}": f"{label}{kind}doctext",
                  f"heading-{kind}": f"{label}{kind}heading"}
    conversations, messages = [], []
    for role in (Role.EMPLOYEE, Role.OWNER):
        member = memberships[role]
        with tenant_context(tenant.pk):
            conversation = chat_services.conversation_create(user=member.user, tenant=tenant,
                                                             actor=_role_actor(member))
            chat_services.conversation_rename(conversation=conversation, title=f"{label}title{role}",
                                              actor=_role_actor(member))
            question = Message.objects.create(tenant=tenant, conversation=conversation, role=Message.Role.USER,
                                              content=f"{label}question{role}")
            chunk = Chunk.objects.filter(document=documents[0]).order_by("ordinal").first()
            citations = [{"n": 1, "chunk_id": chunk.pk if chunk else 0, "document_id": documents[0].pk,
                          "knowledge_base_id": shared.pk, "document_title": documents[0].title, "heading": "",
                          "page": None, "snippet": f"{label}snippet{role}"}]
            answer = Message.objects.create(tenant=tenant, conversation=conversation, role=Message.Role.ASSISTANT,
                                            content=f"{label}answer{role} [1]", reply_to=question,
                                            citations=citations)
        conversations.append(conversation)
        messages += [question, answer]
        texts |= {f"title-{role}": f"{label}title{role}", f"question-{role}": f"{label}question{role}",
                  f"answer-{role}": f"{label}answer{role}", f"snippet-{role}": f"{label}snippet{role}"}
    with tenant_context(tenant.pk):
        chat_services.conversation_set_knowledge_bases(conversation=conversations[0],
                                                       knowledge_base_ids=[shared.pk, private.pk],
                                                       membership=employee, actor=_role_actor(employee))
        for key_role, member in memberships.items():
            created = api_key_create(tenant=tenant, name=f"{label}key{key_role}", user=member.user,
                                     created_by=users[Role.OWNER], actor=_role_actor(memberships[Role.OWNER]))
            side.api_keys[key_role] = created.plaintext
            texts[f"key-{key_role}"] = f"{label}key{key_role}"
    group = Group.objects.create(name=f"{label}group")
    users[Role.EMPLOYEE].groups.add(group)
    texts["group"] = group.name
    # Login records (django-axes and the audit trail): a good login of the employee, a failed one of
    # the compliance officer. Axes keeps no failure log here (AXES_ENABLE_ACCESS_FAILURE_LOG is off),
    # so that row is written as axes would write it, for its admin pages to point at.
    Client().post("/login/", {"username": users[Role.EMPLOYEE].username, "password": PASSWORD})
    Client().post("/login/", {"username": users[Role.COMPLIANCE].username, "password": "not-the-password"})
    AccessFailureLog.objects.create(username=users[Role.COMPLIANCE].username, ip_address="127.0.0.1",
                                    user_agent="sweep", http_accept="*/*", path_info="/login/",
                                    attempt_time=timezone.now())
    with tenant_context(tenant.pk):
        events = list(AuditEvent.objects.filter(tenant=tenant).order_by("seq").values_list("pk", flat=True))
        chunks = list(Chunk.objects.filter(tenant=tenant).values_list("pk", flat=True))
    # Keyed by path parameter name where one exists (ID_KEYS). One object of each kind is pointed at,
    # but a shared and a private knowledge base and a document of each: their access rules differ.
    side.ids = {
        "tenant_id": [tenant.pk],
        "user_id": [users[Role.EMPLOYEE].pk],
        "membership_id": [memberships[Role.EMPLOYEE].pk],
        "conversation_id": [conversations[0].pk],
        "message_id": [messages[0].pk],
        "event_id": events[-1:],
        "knowledge_base_id": [shared.pk, private.pk],
        "document_id": [d.pk for d in documents],
        "chunk_id": chunks[:1],
        "source_id": [source.pk],
        "api_key_id": _api_key_ids(tenant)[:1],
        "group_id": [group.pk],
        **{key: ids[:1] for key, ids in
           _axes_ids([users[Role.EMPLOYEE].username, users[Role.COMPLIANCE].username]).items()},
    }
    assert set(side.ids) == set(ID_KEYS)
    return side


# The kinds of ids a tenant's `ids` holds; the walker fills path parameters from them.
ID_KEYS = ("tenant_id", "user_id", "membership_id", "conversation_id", "message_id", "event_id", "knowledge_base_id",
           "document_id", "chunk_id", "source_id", "api_key_id", "group_id", "accessattempt_id", "accesslog_id",
           "accessfailurelog_id")


def _api_key_ids(tenant: Tenant) -> list[int]:
    with tenant_context(tenant.pk):
        return sorted(ApiKey.objects.filter(tenant=tenant).values_list("pk", flat=True))


def _axes_ids(usernames: list[str]) -> dict[str, list[int]]:
    found = {key: list(model.objects.filter(username__in=usernames).values_list("pk", flat=True))
             for key, model in (("accessattempt_id", AccessAttempt), ("accesslog_id", AccessLog),
                                ("accessfailurelog_id", AccessFailureLog))}
    assert all(found.values()), f"the logins left no django-axes records: {found}"
    return found


# ------------------------------------------------------------------------------ the URL walker


@dataclass(frozen=True)
class Route:
    """One URL pattern of the project, with its full route string as Django's resolver reports it."""

    route: str  # e.g. "knowledge/<int:knowledge_base_id>/" or "admin/(?P<app_label>tenants|auth|axes)/$"
    name: str  # "app:view" or "" for unnamed patterns
    params: tuple[str, ...]

    @property
    def bearer(self) -> bool:
        """The OpenAI-compatible API: authenticated by an API key, never by the session."""
        return self.route.startswith("v1/")

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods to try. Django admin reads a body only from POST and answers PUT, PATCH and
        DELETE exactly as GET, so its pages get GET and POST; every other route gets all five."""
        return ("get", "post") if self.route.startswith("admin/") else METHODS

    @property
    def admin_model(self) -> str:
        """"app.model" for a Django-admin model page, else ""."""
        match = re.match(r"admin/(\w+)/(\w+)/", self.route)
        return f"{match[1]}.{match[2]}" if match else ""


_PATH_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")
_REGEX_PARAM = re.compile(r"\(\?P<(\w+)>([^)]*)\)")


def routes() -> list[Route]:
    """Every URL pattern of the project, found by walking the resolver (includes, namespaces, admin)."""
    found: list[Route] = []

    def joined(prefix: str, pattern: Any) -> str:
        return prefix + str(pattern.pattern).removeprefix("^")  # as Django joins them (ResolverMatch.route)

    def walk(resolver: URLResolver, prefix: str, namespace: str) -> None:
        for pattern in resolver.url_patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern, joined(prefix, pattern),
                     f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace)
            elif isinstance(pattern, URLPattern):
                route = joined(prefix, pattern)
                regex_params = tuple(m[1] for m in _REGEX_PARAM.finditer(route))
                params = regex_params + tuple(m[2] for m in _PATH_PARAM.finditer(_REGEX_PARAM.sub("", route)))
                found.append(Route(route=route, name=f"{namespace}{pattern.name}" if pattern.name else "",
                                   params=params))

    walk(get_resolver(), "", "")
    return found


# Which of a tenant's ids fill a Django-admin model page's `object_id` (and `id`).
ADMIN_MODEL_IDS = {
    "tenants.tenant": "tenant_id", "tenants.membership": "membership_id", "auth.user": "user_id",
    "auth.group": "group_id", "axes.accessattempt": "accessattempt_id", "axes.accesslog": "accesslog_id",
    "axes.accessfailurelog": "accessfailurelog_id",
}
# view_on_site's (content type, object) pairs: every tenant-owned model the admin could redirect to.
VIEW_ON_SITE_MODELS = {
    "tenants.membership": "membership_id", "tenants.tenant": "tenant_id", "auth.user": "user_id",
    "chat.conversation": "conversation_id", "chat.message": "message_id", "knowledge.knowledgebase": "knowledge_base_id",
    "knowledge.document": "document_id", "knowledge.knowledgesource": "source_id", "openai_api.apikey": "api_key_id",
    "audit.auditevent": "event_id",
}


def _fills(route: Route, ids: dict[str, list[int]]) -> list[dict[str, str]] | None:
    """The values for each parameter of `route`, from one tenant's ids; None if a parameter has no filler."""
    def ints(key: str) -> list[str]:
        return [str(i) for i in ids[key]]

    if set(route.params) == {"content_type_id", "object_id"}:
        pairs = []
        for model, key in VIEW_ON_SITE_MODELS.items():
            content_type = ContentType.objects.get_by_natural_key(*model.split("."))
            pairs += [{"content_type_id": str(content_type.pk), "object_id": i} for i in ints(key)]
        return pairs
    combos: list[dict[str, str]] = [{}]
    for param in route.params:
        if param in ("object_id", "id") and route.admin_model in ADMIN_MODEL_IDS:
            values = ints(ADMIN_MODEL_IDS[route.admin_model])
        elif param in ids:
            values = ints(param)
        elif param == "fmt":
            values = ["jsonl", "csv"]
        elif param == "model_id":
            values = [f"deepseek-web:kb:{i}" for i in ids["knowledge_base_id"]]
        elif param == "app_label":
            match = re.search(r"\(\?P<app_label>([^)]*)\)", route.route)
            values = match[1].split("|") if match else []
        elif param == "url":  # the admin's catch-all: another model's change page without its slash
            values = [f"tenants/membership/{ids['membership_id'][0]}/change",
                      f"auth/user/{ids['user_id'][0]}/change"]
        else:
            return None
        combos = [{**combo, param: value} for combo in combos for value in values]
    return combos


def _build(route: str, values: dict[str, str]) -> str:
    path = _REGEX_PARAM.sub(lambda m: values[m[1]], route)
    path = _PATH_PARAM.sub(lambda m: values[m[2]], path)
    return "/" + path.removesuffix("$")


def fill(route: Route, ids: dict[str, list[int]]) -> list[str] | None:
    """The URLs of `route` pointed at one tenant's objects, each checked to resolve back to `route`
    itself; None when a parameter has no filler (test_outsider_sweep_idor.UNFILLED must say why)."""
    combos = _fills(route, ids)
    if combos is None:
        return None
    urls = []
    for values in combos:
        url = _build(route.route, values)
        match = resolve(url)
        assert match.route == route.route, f"{url} resolves to {match.route}, not {route.route}"
        urls.append(url)
    return urls


def document_settle(document: Document, timeout_s: float = 60.0) -> Document:
    """Runs a queued document through the real pipeline, then waits for it to be ready or failed: a
    gpu worker running in this process may have taken it first (its steps guard against each other)."""
    run_pipeline(document)
    deadline = time.monotonic() + timeout_s
    while True:
        with tenant_context(document.tenant_id):
            current = Document.objects.get(pk=document.pk)
        if current.status in (Document.Status.READY, Document.Status.FAILED) or time.monotonic() > deadline:
            return current
        time.sleep(0.1)


def turn_settle(reply: Message, timeout_s: float = 60.0) -> Message:
    """Runs a queued turn as the gpu worker does, as this process's worker identity (the one an
    in-process gpu worker has, so whichever claims it first, the other leaves it alone); then waits
    for its end."""
    from chat import turns

    turns.message_generate(tenant_id=reply.tenant_id, message_id=reply.pk)
    deadline = time.monotonic() + timeout_s
    while True:
        with tenant_context(reply.tenant_id):
            current = Message.objects.get(pk=reply.pk)
        if current.is_final or time.monotonic() > deadline:
            return current
        time.sleep(0.1)


# ---------------------------------------------------------------------------------- requests


def body_of(response: Any) -> str:
    content = b"".join(response) if getattr(response, "streaming", False) else response.content
    return bytes(content).decode(errors="replace")


def session_client(user: User, *, csrf: bool = True) -> Client:
    """A signed-in browser that enforces CSRF as production does; with `csrf`, it sends a valid token
    (cookie and X-CSRFToken header, as htmx sends it), so CSRF is never what refuses its requests."""
    client = Client(enforce_csrf_checks=True, raise_request_exception=False)
    client.force_login(user)
    if csrf:
        token = get_random_string(32, string.ascii_letters + string.digits)
        client.cookies[settings.CSRF_COOKIE_NAME] = token
        client.defaults["HTTP_X_CSRFTOKEN"] = token
    return client


def is_csrf_refusal(response: Any) -> bool:
    """Django's CSRF failure page, or DRF's session-authentication CSRF error (every page carries the
    token itself, so the word alone says nothing)."""
    body = body_of(response)
    return response.status_code == 403 and ("CSRF verification failed" in body or "CSRF Failed" in body)


def form_body(b: Tenantry, serial: int) -> dict[str, Any]:
    """A form that names tenant B's objects in every field a view might read; no canary in it."""
    ids = b.ids
    return {
        "title": "sweep-hijack", "name": "sweep-hijack", "description": "sweep", "role": "owner", "active": "0",
        "is_active": "on", "tenant_id": ids["tenant_id"][0], "tenant": ids["tenant_id"][0],
        "user": ids["user_id"][0], "knowledge_base": ids["knowledge_base_id"], "member_ids": ids["user_id"][:1],
        "access_roles": ["employee"], "chunk_max_tokens": 256, "chunk_overlap_tokens": 32, "kind": "url",
        "location": "https://example.com/", "sync_interval_minutes": 60, "username": f"sweep-probe-{serial}",
        "password": "sweep-Probe-passw0rd", "conversation": ids["conversation_id"][0],
        "membership": ids["membership_id"][0], "api_key": ids["api_key_id"][0], "document": ids["document_id"][0],
        "audit_retention_days": 3650, "quota_messages_per_user_day": 500, "quota_tokens_per_month": 5_000_000,
        "action": "delete_selected", "_selected_action": ids["membership_id"] + ids["user_id"], "post": "yes",
        "old_password": "x", "new_password1": "sweep-Probe-passw0rd", "new_password2": "sweep-Probe-passw0rd",
        "files": SimpleUploadedFile("sweep.md", b"# sweep\n\nprobe"),
    }


def query_of(b: Tenantry) -> dict[str, Any]:
    """The query string of every GET: tenant B's ids where a view might look for them."""
    ids = b.ids
    return {"conversation": ids["conversation_id"][0], "tenant": ids["tenant_id"][0],
            "knowledge_base": ids["knowledge_base_id"][0], "chunk": ids["chunk_id"][0],
            "target": f"conversation:{ids['conversation_id'][0]}", "actor": ids["user_id"][0], "format": "json",
            "app_label": "tenants", "model_name": "membership", "field_name": "user"}


def send(client: Client, method: str, url: str, *, data: Any = None, json_body: bool = False) -> Any:
    """One request by method name; bodies of PUT/PATCH/DELETE are url-encoded forms (or JSON)."""
    if method == "get":
        return client.get(url, data or {})
    if method == "post" and not json_body:
        return client.post(url, data or {})
    if json_body:
        return getattr(client, method)(url, json.dumps(data or {}), content_type="application/json")
    plain = {k: v for k, v in (data or {}).items() if not hasattr(v, "read")}
    return getattr(client, method)(url, urlencode(plain, doseq=True), content_type="application/x-www-form-urlencoded")


def followed(client: Client, response: Any) -> Any | None:
    """The page a redirect leads to, fetched once, unless it is a login page or off this site."""
    if response.status_code not in (301, 302, 303, 307, 308):
        return None
    location = urlsplit(response["Location"])
    if location.netloc or location.path.startswith(("/login/", "/admin/login/")):
        return None
    return client.get(location.path + (f"?{location.query}" if location.query else ""))


# ---------------------------------------------------------------------------- row snapshots


def tenant_tables() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'"
            " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
            " ORDER BY c.relname")
        return [row[0] for row in cursor.fetchall()]


@contextmanager
def row_snapshots(side: Tenantry) -> Iterator[Callable[[], dict[str, str]]]:
    """A function that digests every row of `side`: each tenant table's rows as the owner role reads
    them (its own connection, so only committed writes count), its users, their groups and
    permissions, its tenant row, and its audit chain's head and retention."""
    tables = tenant_tables()
    user_ids = sorted(user.pk for user in side.users.values())
    parts = [f"SELECT '{t}', md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), '')) FROM {t} r"
             f" WHERE r.tenant_id = %(tenant)s" for t in tables]
    parts += [
        "SELECT 'auth_user', md5(coalesce(string_agg(r::text, '|' ORDER BY r.id), '')) FROM auth_user r"
        " WHERE r.id = ANY(%(users)s)",
        "SELECT 'auth_user_groups', md5(coalesce(string_agg(r::text, '|' ORDER BY r.id), ''))"
        " FROM auth_user_groups r WHERE r.user_id = ANY(%(users)s)",
        "SELECT 'auth_user_user_permissions', md5(coalesce(string_agg(r::text, '|' ORDER BY r.id), ''))"
        " FROM auth_user_user_permissions r WHERE r.user_id = ANY(%(users)s)",
        "SELECT 'auth_group', md5(coalesce(string_agg(r::text, '|' ORDER BY r.id), '')) FROM auth_group r"
        " WHERE r.id = ANY(%(groups)s)",
        "SELECT 'tenants_tenant', md5(coalesce(string_agg(r::text, '|'), '')) FROM tenants_tenant r"
        " WHERE r.id = %(tenant)s",
        "SELECT 'audit_audithead', md5(coalesce(string_agg(r::text, '|'), '')) FROM audit_audithead r"
        " WHERE r.chain = %(tenant)s",
        "SELECT 'audit_auditretention', md5(coalesce(string_agg(r::text, '|'), '')) FROM audit_auditretention r"
        " WHERE r.chain = %(tenant)s",
    ]
    sql = " UNION ALL ".join(parts)
    params = {"tenant": side.tenant.pk, "users": user_ids, "groups": side.ids["group_id"]}
    with owner_connection(side.tenant.pk) as conn:
        def snapshot() -> dict[str, str]:
            return {table: digest for table, digest in conn.execute(sql, params).fetchall()}

        yield snapshot


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(t for t in before.keys() | after.keys() if before.get(t) != after.get(t))


# ------------------------------------------------------------------------------- the ledger


@dataclass
class Ledger:
    """What a sweep tried and what it found; `report` prints it for `pytest -s`."""

    name: str
    counted: str = "findings"  # what a finding is here: leaks, injections, acceptances...
    attempts: int = 0
    findings: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    extra: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def count(self, key: str) -> None:
        self.extra[key] = self.extra.get(key, 0) + 1

    def record(self, response: Any) -> None:
        self.attempts += 1
        self.statuses[response.status_code] += 1

    def report(self) -> None:
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        extra = "".join(f" {k}={v}" for k, v in self.extra.items())
        print(f"\n[outsider sweep] {self.name}: attempts={self.attempts} {self.counted}={len(self.findings)}{extra}"
              + (f" (HTTP statuses {statuses})" if statuses else ""))
        for note in self.notes:
            print(f"  {note}")
        for finding in self.findings[:50]:
            print(f"  FOUND {finding}")


def canaries_in(text: str, side: Tenantry) -> list[str]:
    """`side`'s texts that `text` contains (its label alone catches any of them, and partial ones)."""
    if side.label not in text:
        return []
    return [c for c in side.canaries if c in text] or [side.label]


# ------------------------------------------------------------------------------ HTML scanning

# Each payload carries its marker, so markup found in a page can be traced back to it.
XSS_PAYLOADS = (
    "<img src=x onerror=alert('XSSMARK1')>",
    "<script>alert('XSSMARK2')</script>",
    "javascript:alert('XSSMARK3')",
    "\"><svg onload=alert('XSSMARK4')>",
    "'><svg/onload=alert('XSSMARK5')>",
    "[click me](javascript:alert('XSSMARK6'))",
)
XSS_MARKER = "XSSMARK"
_URL_ATTRIBUTES = {"href", "src", "action", "formaction", "xlink:href", "data", "poster", "background"}


class _InjectedMarkup(HTMLParser):
    """Elements and attributes a payload made: a script holding a marker, an event handler holding
    one, or a javascript: URL. An escaped payload is only text, so none of these."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._script = tag == "script"
        for name, value in attrs:
            value = value or ""
            if name.startswith("on") and XSS_MARKER in value:
                self.found.append(f"<{tag} {name}={value!r}>")
            if name in _URL_ATTRIBUTES and re.sub(r"\s", "", value).lower().startswith("javascript:"):
                self.found.append(f"<{tag} {name}={value!r}>")
            if XSS_MARKER in name:
                self.found.append(f"<{tag}> attribute {name!r}")
        if XSS_MARKER in tag:
            self.found.append(f"element <{tag}>")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self._script = False

    def handle_endtag(self, tag: str) -> None:
        self._script = False

    def handle_data(self, data: str) -> None:
        if self._script and XSS_MARKER in data:
            self.found.append(f"<script>{data[:80]}")


def injected_markup(html: str) -> list[str]:
    """What a payload injected into `html`: raw payloads, and the parser's view of elements and attributes."""
    found = [f"raw payload {p!r}" for p in XSS_PAYLOADS if ("<" in p or '"' in p) and p in html]
    parser = _InjectedMarkup()
    parser.feed(html)
    parser.close()
    return found + parser.found


def is_html(response: Any) -> bool:
    return str(response.get("Content-Type", "")).startswith("text/html")


def multipart(files: list[tuple[str, bytes]], field_name: str = "files") -> tuple[bytes, str]:
    """A multipart body whose file names are sent exactly as given (Django's test client would take
    each name's basename first, so `../../x` never left it)."""
    boundary = "----outsider-sweep-boundary"
    parts = []
    for name, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="'.encode()
                     + name.encode("utf-8") + b'"\r\nContent-Type: application/octet-stream\r\n\r\n' + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"



def cross_tenant_references() -> list[str]:
    """Rows that point across tenants: a tenant row whose foreign key reaches another tenant's row,
    or a user who is no member of the row's tenant. Read as the database superuser, since row-level
    security would hide the far side of the reference from any other role."""
    found = []
    with superuser_connection() as conn:
        keys = conn.execute(
            "SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text, r.attname"
            " FROM pg_constraint c"
            " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
            " JOIN pg_attribute r ON r.attrelid = c.confrelid AND r.attnum = c.confkey[1]"
            " WHERE c.contype = 'f' AND c.conparentid = 0 AND cardinality(c.conkey) = 1 AND a.attname <> 'tenant_id'"
            " AND EXISTS (SELECT 1 FROM pg_attribute t WHERE t.attrelid = c.conrelid AND t.attname = 'tenant_id')"
        ).fetchall()
        for table, column, target, target_column in keys:
            target_owned = conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = %s::regclass"
                                        " AND attname = 'tenant_id'", [target]).fetchone()
            if target_owned and target_owned[0]:
                sql = (f"SELECT count(*) FROM {table} x JOIN {target} t ON x.{column} = t.{target_column}"
                       " WHERE x.tenant_id IS DISTINCT FROM t.tenant_id")
            elif target == "auth_user" and table != "tenants_membership":
                sql = (f"SELECT count(*) FROM {table} x WHERE x.{column} IS NOT NULL AND NOT EXISTS"
                       f" (SELECT 1 FROM tenants_membership m WHERE m.user_id = x.{column} AND m.tenant_id = x.tenant_id)")
            else:
                continue
            row = conn.execute(sql).fetchone()
            if row and row[0]:
                found.append(f"{table}.{column} -> {target}: {row[0]} rows of another tenant")
    return found
