"""URL sources fetch only what was checked (issue 12, finding 7).

A real DNS server (dnslib) answers on a high port and rebinds: the first answer for
rebind.test is 127.0.0.2 (the "public" site: KNOWLEDGE_URL_ALLOWED_NETWORKS allows 127.0.0.2/32),
every later one 127.0.0.1, where an internal page listens on the same port. Before, the check and
the fetch each resolved the name, and redirects were followed unchecked: a redirect to 127.0.0.1
put an internal page into a knowledge base.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from dnslib import QTYPE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from audit.services import SYSTEM
from knowledge.models import Document, KnowledgeSource
from knowledge.services import KnowledgeInputError, fetch, sources
from knowledge.services.knowledge_bases import knowledge_base_create
from tenants.rls import tenant_context

PUBLIC, INTERNAL = "127.0.0.2", "127.0.0.1"


class RebindingResolver(BaseResolver):  # type: ignore[misc]  # dnslib ships no types
    """rebind.test: PUBLIC once, then INTERNAL; public.test: always PUBLIC; TTL 0."""

    def __init__(self) -> None:
        self.rebind_answers = 0

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".")
        if request.q.qtype == QTYPE.A and name in ("rebind.test", "public.test"):
            address = PUBLIC
            if name == "rebind.test":
                address = PUBLIC if self.rebind_answers == 0 else INTERNAL
                self.rebind_answers += 1
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=0))
        return reply


class Page(http.server.BaseHTTPRequestHandler):
    """The public site redirects /to-internal to the internal page; the internal site counts hits."""

    internal_hits: list[str] = []
    port = 0

    def do_GET(self) -> None:  # the http.server API names it
        host = self.connection.getsockname()[0]
        if host == INTERNAL:
            Page.internal_hits.append(self.path)
            body = b"<html><body><h1>Internal</h1><p>database password</p></body></html>"
        elif self.path == "/to-internal":
            self.send_response(302)
            self.send_header("Location", f"http://{INTERNAL}:{Page.port}/secret")
            self.end_headers()
            return
        elif self.path == "/to-rebind":
            self.send_response(302)
            self.send_header("Location", f"http://rebind.test:{Page.port}/secret")
            self.end_headers()
            return
        elif self.path == "/to-public":
            self.send_response(301)
            self.send_header("Location", "/canteen")
            self.end_headers()
            return
        else:
            body = b"<html><head><title>Canteen</title></head><body><h1>Canteen</h1><p>Open at eight.</p></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def network(settings) -> Iterator[RebindingResolver]:
    resolver = RebindingResolver()
    dns = DNSServer(resolver, address="127.0.0.1", port=0,
                    logger=DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False))
    dns.start_thread()
    public = http.server.ThreadingHTTPServer((PUBLIC, 0), Page)
    Page.port = public.server_address[1]
    internal = http.server.ThreadingHTTPServer((INTERNAL, Page.port), Page)
    Page.internal_hits = []
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (public, internal)]
    for thread in threads:
        thread.start()
    settings.KNOWLEDGE_URL_ALLOW_PRIVATE = False
    settings.KNOWLEDGE_URL_ALLOWED_NETWORKS = [f"{PUBLIC}/32"]
    settings.KNOWLEDGE_URL_NAMESERVERS = [f"127.0.0.1:{dns.server.server_address[1]}"]
    yield resolver
    for server in (public, internal):
        server.shutdown()
        server.server_close()
    dns.stop()


def make_source(world: Any, location: str) -> KnowledgeSource:
    with tenant_context(world.tenant_a.pk):
        kb = knowledge_base_create(tenant=world.tenant_a, name=f"Intranet {location}", actor=SYSTEM)
        return sources.source_create(knowledge_base=kb, kind="url", location=location, actor=SYSTEM)


def sync(source: KnowledgeSource) -> tuple[dict[str, int], str]:
    counts = sources.source_sync(tenant_id=source.tenant_id, source_id=source.pk)
    with tenant_context(source.tenant_id):
        return counts, KnowledgeSource.objects.get(pk=source.pk).last_error


def test_it_connects_to_the_address_it_checked_when_the_name_rebinds(network: RebindingResolver) -> None:
    # One fetch resolves once: the checked answer (PUBLIC) is the one connected to.
    with fetch.fetch(f"http://rebind.test:{Page.port}/canteen", {}) as fetched:
        assert b"Canteen" in fetched.response.read()
    assert network.rebind_answers == 1
    # The name now points inside: refused before any connection.
    with pytest.raises(fetch.FetchRefused, match="private address"), fetch.fetch(
            f"http://rebind.test:{Page.port}/canteen", {}):
        pass
    assert Page.internal_hits == []


def test_it_refuses_a_source_whose_name_rebinds_after_its_check(world, network: RebindingResolver) -> None:
    source = make_source(world, f"http://rebind.test:{Page.port}/canteen")  # checked: PUBLIC
    counts, error = sync(source)  # resolved again: INTERNAL
    assert "private address" in error and counts["queued"] == 0
    assert Page.internal_hits == []


def test_it_refuses_redirects_to_loopback_and_to_a_rebinding_name(world, network: RebindingResolver) -> None:
    for path in ("/to-internal", "/to-rebind"):
        network.rebind_answers = 1  # rebind.test already answers INTERNAL
        source = make_source(world, f"http://public.test:{Page.port}{path}")
        counts, error = sync(source)
        assert "private address" in error and counts["queued"] == 0, path
        with tenant_context(world.tenant_a.pk):
            assert not Document.objects.filter(source=source).exists()
    assert Page.internal_hits == []


def test_it_fetches_an_allowed_address_through_a_checked_redirect(world, network: RebindingResolver) -> None:
    source = make_source(world, f"http://public.test:{Page.port}/to-public")
    counts, error = sync(source)
    assert error == "" and counts["queued"] == 1
    with tenant_context(world.tenant_a.pk):
        assert Document.objects.filter(source=source).count() == 1
    assert Page.internal_hits == []


def test_it_refuses_private_names_at_creation_without_the_allowed_network(world, network, settings) -> None:
    settings.KNOWLEDGE_URL_ALLOWED_NETWORKS = []
    with pytest.raises(KnowledgeInputError, match="private address"):
        make_source(world, f"http://public.test:{Page.port}/canteen")
    for address in ("169.254.169.254", "100.64.0.1", "[::ffff:127.0.0.1]", "0.0.0.0"):
        with pytest.raises(KnowledgeInputError, match="private address"):
            make_source(world, f"http://{address}/")


def test_it_keeps_the_host_name_in_the_host_header(network: RebindingResolver) -> None:
    seen: list[str] = []

    class Echo(Page):
        def do_GET(self) -> None:
            seen.append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

    with socket.socket() as probe:
        probe.bind((PUBLIC, 0))
        port = probe.getsockname()[1]
    server = http.server.ThreadingHTTPServer((PUBLIC, port), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with fetch.fetch(f"http://public.test:{port}/", {}) as fetched:
            assert fetched.response.status_code == 204
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [f"public.test:{port}"]
