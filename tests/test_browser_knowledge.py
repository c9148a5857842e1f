"""A knowledge admin uploads two files in a browser and watches them become ready; an employee
then asks a question only one of them answers, and the answer cites that one."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from audit.models import AuditEvent
from chat.models import Message
from knowledge.models import Document
from tenants.rls import tenant_context

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SECURITY = """Information security policy

Lost or stolen laptops must be reported to the IT service desk within one hour, by calling
extension 4455. The service desk then locks the device remotely and revokes its certificates.

Passwords must be at least fourteen characters long and are never shared, not even with IT staff.
"""

CAFETERIA = """# Cafeteria

## Opening hours

The cafeteria on the ground floor serves lunch from noon to two in the afternoon on weekdays.

## Menu

A vegetarian dish is offered every day, and fish on Fridays.
"""


def test_it_answers_from_an_uploaded_file_and_cites_it(
    log_in, world, asgi_server, gpu_worker, browser, settings, tmp_path: Path
) -> None:
    settings.CHAT_MAX_NEW_TOKENS = 48
    (tmp_path / "security-policy.txt").write_text(SECURITY)
    (tmp_path / "cafeteria.md").write_text(CAFETERIA)

    admin: Page = browser.new_page()
    log_in(admin, asgi_server, "erin", world.password)
    admin.click("#knowledge-link")
    admin.fill("#kb-create input[name=name]", "Company policies")
    admin.click("#kb-create button[type=submit]")
    expect(admin.locator("h1")).to_have_text("Company policies")
    admin.set_input_files("#upload input[type=file]", [str(tmp_path / "security-policy.txt"),
                                                       str(tmp_path / "cafeteria.md")])
    admin.click("#upload button[type=submit]")
    expect(admin.locator("#upload-outcomes li")).to_have_count(2)
    rows = admin.locator("#document-table tbody tr")
    expect(rows).to_have_count(2)
    # The table refreshes itself until both are ready: the progress bars fill and chunks appear.
    for row in (rows.nth(0), rows.nth(1)):
        expect(row).to_have_attribute("data-status", "ready", timeout=120_000)
        expect(row.locator("progress")).to_have_attribute("value", "100")
        assert int(row.locator(".chunks").inner_text().split()[0]) >= 1
        expect(row.locator(".duration")).to_contain_text(" s")
    # Polling stops once nothing is in progress.
    expect(admin.locator("#documents[hx-trigger]")).to_have_count(0)
    admin.close()

    employee: Page = browser.new_page()
    log_in(employee, asgi_server, "alice", world.password)
    employee.click("text=+ New chat")
    chooser = employee.locator("#knowledge-chooser")
    chooser.get_by_label("Company policies").check()
    expect(employee.locator("#knowledge-chooser [role=status]")).to_have_text("Saved.")
    employee.fill("#prompt", "How quickly must I report a lost laptop, and to whom?")
    employee.click("#send")
    answer = employee.locator(".msg-assistant").last
    expect(answer).to_have_attribute("data-status", "done", timeout=120_000)
    sources = answer.locator("ol.sources li")
    expect(sources.first).to_contain_text("security-policy.txt")
    expect(answer.locator("ol.sources")).not_to_contain_text("cafeteria")

    # The citation opens the document with the cited passage highlighted.
    with tenant_context(world.tenant_a.pk):
        security = Document.objects.get(name="security-policy.txt")
        reply = Message.objects.get(role="assistant")
        retrieved = AuditEvent.objects.get(action="message.retrieve", target_id=str(reply.pk))
    assert reply.citations[0]["document_id"] == security.pk
    assert retrieved.payload["document_ids"] == [security.pk]
    sources.first.locator("a").click()
    expect(employee.locator("h1")).to_have_text("security-policy.txt")
    expect(employee.locator(".passage.highlighted mark")).to_contain_text("extension 4455")
    employee.close()
