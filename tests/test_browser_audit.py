"""A compliance officer in a browser: filter the trail, open an event, export the selection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from audit.services import actor_for, audit_record

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_it_lets_a_compliance_user_filter_and_export(world, asgi_server, page: Page) -> None:
    alice = actor_for(user_id=world.alice.pk, role="employee", name="alice", ip="10.1.2.3")
    for i in range(3):
        audit_record(tenant_id=world.tenant_a.pk, actor=alice, action="conversation.delete",
                     target_type="conversation", target_id=i)
    audit_record(tenant_id=world.tenant_a.pk, actor=alice, action="conversation.rename",
                 target_type="conversation", target_id=9)
    audit_record(tenant_id=world.tenant_b.pk, actor=actor_for(user_id=world.charlie.pk, role="employee"),
                 action="conversation.delete", target_type="conversation", target_id=77)

    page.goto(asgi_server + "/login/")
    page.fill("#id_username", "dora")
    page.fill("#id_password", world.password)
    page.click("button[type=submit]")
    page.click("text=Audit trail")
    expect(page.locator("#chain-status")).to_contain_text("Chain verified up to event")

    page.fill("#id_action", "conversation.delete")
    page.click("#apply-filters")
    rows = page.locator(".audit-table tbody tr")
    expect(rows).to_have_count(3)
    expect(page.locator(".audit-table .action")).to_have_text(["conversation.delete"] * 3)
    assert "action=conversation.delete" in page.url  # the filtered view is a shareable link

    rows.first.locator("a").click()
    expect(page.locator("h1")).to_contain_text("conversation.delete")
    expect(page.locator(".event-detail")).to_contain_text("10.1.2.3")
    page.go_back()

    with page.expect_download() as download:
        page.click("#export-jsonl")
    lines = Path(download.value.path()).read_text(encoding="utf-8").splitlines()
    documents = [json.loads(line) for line in lines]
    assert len(documents) == 3
    assert {d["event"]["action"] for d in documents} == {"conversation.delete"}
    assert {d["organization"]["id"] for d in documents} == {str(world.tenant_a.pk)}
    assert download.value.suggested_filename.endswith(".jsonl")
