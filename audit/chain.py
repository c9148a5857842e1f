"""The hash chain: how an event's hash is made, and how a chain is verified.

Each event's `hash` is HMAC-SHA256(key, prev_hash + canonical JSON of its fields). The key comes
from settings (AUDIT_HMAC_KEY), never from the database, so whoever can write the database but
not read the key cannot produce a row that verifies. Verification walks a chain in order and
names the first row that was edited, deleted, inserted or reordered.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet

from audit.anchors import newest_anchor
from audit.models import PLATFORM_CHAIN, AuditCheckpoint, AuditEvent, AuditHead

GENESIS_HASH = "0" * 64
# When classifying a broken row, at most this many positions are tried to find where it came from.
_REORDER_SEARCH_LIMIT = 200_000


def _key() -> bytes:
    return settings.AUDIT_HMAC_KEY.encode()


def _mac(message: str) -> str:
    return hmac.new(_key(), message.encode(), hashlib.sha256).hexdigest()


def event_fields(event: AuditEvent, seq: int | None = None) -> dict[str, Any]:
    """The hashed content of an event, in a form that survives a round trip through PostgreSQL."""
    ip = str(ipaddress.ip_address(event.source_ip)) if event.source_ip else None
    return {
        "tenant_id": event.tenant_id,
        "seq": event.seq if seq is None else seq,
        "occurred_at": event.occurred_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor_id": event.actor_id,
        "actor_name": event.actor_name,
        "actor_role": event.actor_role,
        "source_ip": ip,
        "user_agent": event.user_agent,
        "action": event.action,
        "category": event.category,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "outcome": event.outcome,
        "payload": event.payload,
        "trace_id": event.trace_id,
    }


def event_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return _mac(prev_hash + body)


def head_mac(chain: int, seq: int, hash_: str) -> str:
    return _mac(f"head:{chain}:{seq}:{hash_}")


def checkpoint_mac(chain: int, seq: int, hash_: str) -> str:
    return _mac(f"checkpoint:{chain}:{seq}:{hash_}")


def _authentic(event: AuditEvent, seq: int | None = None) -> bool:
    return hmac.compare_digest(event.hash, event_hash(event.prev_hash, event_fields(event, seq)))


@dataclass(frozen=True)
class Break:
    kind: str  # edited | deleted | inserted | reordered
    seq: int  # the chain position where verification stopped
    event_id: int | None  # the offending row, when there is one
    detail: str


@dataclass(frozen=True)
class ChainReport:
    chain: int
    verified_upto: int  # the last position that verified (0: none, or the checkpoint)
    events: int  # events checked
    broken: Break | None
    head_hash: str = ""  # the hash at verified_upto, when the chain verified

    @property
    def ok(self) -> bool:
        return self.broken is None

    def describe(self) -> str:
        label = "platform" if self.chain == PLATFORM_CHAIN else f"tenant {self.chain}"
        if self.broken is None:
            return f"{label}: verified, {self.events} events, up to event {self.verified_upto}"
        b = self.broken
        row = f" (row id {b.event_id})" if b.event_id is not None else ""
        return f"{label}: BROKEN at event {b.seq}{row}: {b.kind}: {b.detail}"


def chain_events(chain: int) -> QuerySet[AuditEvent]:
    condition = Q(tenant__isnull=True) if chain == PLATFORM_CHAIN else Q(tenant_id=chain)
    return AuditEvent.objects.filter(condition)


def chains() -> list[int]:
    """Every chain: the platform's, each tenant's, and any that only a head or checkpoint names."""
    from tenants.models import Tenant

    keys = {PLATFORM_CHAIN, *Tenant.objects.values_list("id", flat=True)}
    keys |= set(AuditHead.objects.values_list("chain", flat=True))
    keys |= set(AuditCheckpoint.objects.values_list("chain", flat=True))
    return sorted(keys)


def _with_next(rows: Iterator[AuditEvent]) -> Iterator[tuple[AuditEvent, AuditEvent | None]]:
    previous = next(rows, None)
    for row in rows:
        assert previous is not None
        yield previous, row
        previous = row
    if previous is not None:
        yield previous, None


def verify_chain(chain: int) -> ChainReport:
    """Walks one chain from its checkpoint (or the start) to its head; stops at the first break."""
    from tenants.rls import tenant_context

    with tenant_context(chain):
        return _verify(chain)


def _verify(chain: int) -> ChainReport:
    checkpoint = AuditCheckpoint.objects.filter(chain=chain).order_by("-seq").first()
    expected, prev = 1, GENESIS_HASH
    if checkpoint is not None:
        if not hmac.compare_digest(checkpoint.mac, checkpoint_mac(chain, checkpoint.seq, checkpoint.hash)):
            return ChainReport(chain, 0, 0, Break("edited", checkpoint.seq, None, "the retention checkpoint was altered"))
        expected, prev = checkpoint.seq + 1, checkpoint.hash
    head = AuditHead.objects.filter(chain=chain).first()
    head_seq = head.seq if head is not None else None
    count = 0
    rows = chain_events(chain).order_by("seq", "id").iterator(chunk_size=2000)
    for row, following in _with_next(rows):
        if row.seq == expected and row.prev_hash == prev and _authentic(row):
            expected, prev, count = expected + 1, row.hash, count + 1
            continue
        return ChainReport(chain, expected - 1, count, _classify(chain, row, following, expected, prev, head_seq))
    if head is not None:
        if not hmac.compare_digest(head.mac, head_mac(chain, head.seq, head.hash)):
            return ChainReport(chain, expected - 1, count, Break("edited", head.seq, None, "the chain head was altered"))
        if head.seq != expected - 1 or head.hash != prev:
            detail = f"events {expected}..{head.seq} at the end of the chain are missing"
            return ChainReport(chain, expected - 1, count, Break("deleted", expected, None, detail))
    rolled_back = _rolled_back(chain, expected - 1, checkpoint.seq if checkpoint is not None else 0)
    if rolled_back is not None:
        return ChainReport(chain, expected - 1, count, rolled_back)
    return ChainReport(chain, expected - 1, count, None, head_hash=prev)


def _rolled_back(chain: int, last: int, pruned_upto: int) -> Break | None:
    """Whether the chain lost events that an earlier verification anchored outside the database."""
    anchor = newest_anchor(chain)
    if anchor is None or anchor.seq <= pruned_upto:
        return None
    if anchor.seq > last:
        return Break("deleted", last + 1, None, f"events {last + 1}..{anchor.seq} were verified at {anchor.at}"
                     " and are gone: the newest events were removed and the head rolled back")
    hash_ = chain_events(chain).filter(seq=anchor.seq).values_list("hash", flat=True).first()
    if hash_ != anchor.hash:
        return Break("deleted", anchor.seq, None, f"event {anchor.seq} is not the one verified at {anchor.at}:"
                     " the chain was rolled back and written again from there")
    return None


def _classify(
    chain: int, row: AuditEvent, following: AuditEvent | None, expected: int, prev: str, head_seq: int | None
) -> Break:
    authentic = _authentic(row)
    if row.seq < expected:
        return Break("inserted", row.seq, row.pk, f"a second event claims position {row.seq}")
    if authentic and row.seq > expected:
        return Break("deleted", expected, row.pk, f"events {expected}..{row.seq - 1} are missing before event {row.seq}")
    if authentic:
        return Break("reordered", row.seq, row.pk, "the event does not follow its recorded predecessor")
    if head_seq is not None and row.seq > head_seq:
        return Break("inserted", row.seq, row.pk, f"an event after the recorded end of the chain ({head_seq})")
    # An authentic event written at another position was moved here.
    last = head_seq if head_seq is not None else row.seq + 1
    for original in range(max(1, expected - 1), min(last, expected + _REORDER_SEARCH_LIMIT) + 1):
        if original != row.seq and _authentic(row, seq=original):
            return Break("reordered", row.seq, row.pk, f"the event written at position {original} was moved here")
    if following is not None and following.prev_hash == prev:
        return Break("inserted", row.seq, row.pk, "an event that no other event links to")
    return Break("edited", row.seq, row.pk, "its content no longer matches its hash")
