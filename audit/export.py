"""Exports of the audit trail: JSON lines in Elastic Common Schema, and CSV.

Both stream in batches by keyset (seq), so memory stays flat however long the trail is. CSV cells
that a spreadsheet would run as a formula are neutralised; JSON lines carry the values as recorded.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.db.models import QuerySet

from audit.models import AuditEvent
from tenants.rls import tenant_context

EXPORT_BATCH = 1000
CSV_COLUMNS = [
    "@timestamp", "event.sequence", "event.action", "event.category", "event.outcome", "user.id", "user.name",
    "user.roles", "organization.id", "source.ip", "user_agent.original", "trace.id", "target.type", "target.id",
    "payload", "hash", "prev_hash",
]
# What spreadsheets (Excel, LibreOffice, Google Sheets) take for the start of a formula. Recorded
# values come from attackers too (a failed login's user name and User-Agent), and compliance staff
# open the CSV in a spreadsheet: `=HYPERLINK(...)` would run there. Shared with the console, which
# refuses such user names outright.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def ecs_document(event: AuditEvent) -> dict[str, Any]:
    """One event as an ECS document (nested objects, as Elasticsearch ingests them)."""
    return {
        "@timestamp": event.occurred_at.isoformat(),
        "event": {
            "action": event.action,
            "category": [event.category] if event.category else [],
            "outcome": event.outcome,
            "sequence": event.seq,
            "id": str(event.pk),
            "kind": "event",
        },
        "user": {"id": str(event.actor_id) if event.actor_id is not None else None,
                 "name": event.actor_name, "roles": [event.actor_role] if event.actor_role else []},
        "organization": {"id": str(event.tenant_id) if event.tenant_id else "platform"},
        "source": {"ip": event.source_ip},
        "user_agent": {"original": event.user_agent},
        "trace": {"id": event.trace_id or None},
        "dsw": {
            "target": {"type": event.target_type, "id": event.target_id},
            "payload": event.payload,
            "hash": event.hash,
            "prev_hash": event.prev_hash,
        },
    }


def _csv_cell(value: str) -> str:
    # OWASP's advice for CSV injection: a leading single quote makes the spreadsheet show the cell
    # as text. The csv module only quotes; no library we use does this. Data cells only: the header
    # is ours (and `@timestamp` is ECS's name).
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def _csv_row(event: AuditEvent) -> list[str]:
    doc = ecs_document(event)
    cells = [
        doc["@timestamp"], str(event.seq), event.action, event.category, event.outcome,
        doc["user"]["id"] or "", event.actor_name, event.actor_role, doc["organization"]["id"],
        event.source_ip or "", event.user_agent, event.trace_id, event.target_type, event.target_id,
        json.dumps(event.payload, sort_keys=True, ensure_ascii=False), event.hash, event.prev_hash,
    ]
    return [_csv_cell(cell) for cell in cells]


def _csv_line(row: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(row)
    return buffer.getvalue()


async def _batches(queryset: QuerySet[AuditEvent], tenant_id: int) -> AsyncIterator[list[AuditEvent]]:
    # Keyset pagination on seq (unique within a tenant's chain): each batch is one small query,
    # in its own transaction with the tenant set (the request's transaction is over by now).
    ordered = queryset.order_by("seq")
    last = 0

    def fetch(after: int) -> list[AuditEvent]:
        with tenant_context(tenant_id):
            return list(ordered.filter(seq__gt=after)[:EXPORT_BATCH])

    while True:
        batch = await sync_to_async(fetch)(last)
        if not batch:
            return
        yield batch
        last = batch[-1].seq


async def stream_jsonl(queryset: QuerySet[AuditEvent], tenant_id: int) -> AsyncIterator[str]:
    async for batch in _batches(queryset, tenant_id):
        # json.dumps escapes control characters (\r, \n, ESC) inside strings: one event per line.
        yield "".join(json.dumps(ecs_document(e), ensure_ascii=False) + "\n" for e in batch)


async def stream_csv(queryset: QuerySet[AuditEvent], tenant_id: int) -> AsyncIterator[str]:
    yield _csv_line(CSV_COLUMNS)
    async for batch in _batches(queryset, tenant_id):
        yield "".join(_csv_line(_csv_row(e)) for e in batch)
