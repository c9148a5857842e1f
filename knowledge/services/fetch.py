"""Fetching a URL source so that only what was checked is fetched (server-side request forgery).

A name is resolved once, every address it resolves to is checked (public, or inside
KNOWLEDGE_URL_ALLOWED_NETWORKS, or anything with KNOWLEDGE_URL_ALLOW_PRIVATE), and the connection
goes to that checked address: a DNS answer that changes between the check and the fetch (DNS
rebinding) changes nothing. Redirects are followed here, at most MAX_REDIRECTS, each hop resolved
and checked the same way.

httpx has no option to connect to a given address for a name, so PinnedTransport rewrites the
request's host to the address while the Host header and the TLS server name (SNI, and the
certificate check) stay the name's.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.resolver
import httpx
from django.conf import settings

MAX_REDIRECTS = 5
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
TIMEOUT_S = 20.0
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchRefused(Exception):
    """The URL may not be fetched; the message says why, for the user."""


@dataclass(frozen=True)
class Target:
    url: httpx.URL
    address: IPAddress


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(network, strict=False) for network in settings.KNOWLEDGE_URL_ALLOWED_NETWORKS]


def address_allowed(address: IPAddress) -> bool:
    if settings.KNOWLEDGE_URL_ALLOW_PRIVATE:
        return True
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(address in network for network in _allowed_networks()):
        return True
    # is_global: not private, loopback, link-local (cloud metadata), shared (CGNAT) or reserved.
    return address.is_global and not address.is_multicast


def _resolver() -> dns.resolver.Resolver | None:
    """dnspython on the configured DNS servers; None: the system's resolver (and /etc/hosts)."""
    if not settings.KNOWLEDGE_URL_NAMESERVERS:
        return None
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = []
    for server in settings.KNOWLEDGE_URL_NAMESERVERS:
        host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
        resolver.nameservers.append(host)
        if port:
            resolver.port = int(port)
    return resolver


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` has now, asked once."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    resolver = _resolver()
    addresses: list[IPAddress] = []
    try:
        if resolver is None:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        else:
            for record_type in ("A", "AAAA"):
                try:
                    answer = resolver.resolve(host, record_type, lifetime=5)
                except dns.resolver.NoAnswer:
                    continue
                addresses += [ipaddress.ip_address(record.to_text()) for record in answer]
    except (OSError, dns.exception.DNSException) as exc:
        raise FetchRefused(f"Cannot resolve {host}: {exc}.") from None
    if not addresses:
        raise FetchRefused(f"Cannot resolve {host}: no address.")
    return addresses


def check_url(url: str | httpx.URL) -> Target:
    """Resolves and checks a URL; the fetch must then connect to the returned address."""
    try:
        parsed = httpx.URL(str(url).strip()) if isinstance(url, str) else url
    except httpx.InvalidURL:
        raise FetchRefused("Enter an http:// or https:// address.") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise FetchRefused("Enter an http:// or https:// address.")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = resolve(parsed.host, port)
    # Every address must pass: a name with one public and one internal address is refused, since
    # which one a later connection would use is up to the resolver.
    for address in addresses:
        if not address_allowed(address):
            raise FetchRefused(f"{parsed.host} is a private address ({address}); intranet sources are turned off "
                               "(KNOWLEDGE_URL_ALLOW_PRIVATE, KNOWLEDGE_URL_ALLOWED_NETWORKS).")
    return Target(url=parsed, address=addresses[0])


class PinnedTransport(httpx.HTTPTransport):
    """Connects to the checked address; Host and TLS server name stay the URL's name."""

    def __init__(self, address: IPAddress, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.address = address

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        name = request.url.host
        if name != str(self.address):
            request.extensions = {**request.extensions, "sni_hostname": name}
        request.url = request.url.copy_with(host=str(self.address))
        return super().handle_request(request)


@dataclass
class Fetched:
    url: httpx.URL  # after redirects
    response: httpx.Response


@contextmanager
def fetch(url: str, headers: dict[str, str]) -> Iterator[Fetched]:
    """GETs `url`, streaming, following checked redirects; the response is closed on exit."""
    target = check_url(url)
    for _ in range(MAX_REDIRECTS + 1):
        # trust_env off: a proxy from the environment would resolve the name itself, unchecked.
        client = httpx.Client(transport=PinnedTransport(target.address), timeout=TIMEOUT_S, follow_redirects=False,
                              trust_env=False)
        try:
            # The Host header is set from the URL before the transport swaps the host for the address.
            request = client.build_request("GET", target.url, headers=headers)
            response = client.send(request, stream=True)
        except httpx.HTTPError as exc:
            client.close()
            raise FetchRefused(f"Could not fetch the page: {exc}.") from None
        location = response.headers.get("Location")
        if response.status_code not in REDIRECT_STATUSES or location is None:
            try:
                yield Fetched(url=target.url, response=response)
            finally:
                response.close()
                client.close()
            return
        response.close()
        client.close()
        target = check_url(target.url.join(location))
    raise FetchRefused(f"More than {MAX_REDIRECTS} redirects.")
