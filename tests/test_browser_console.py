"""A tenant owner in a browser adds a user and changes their role; the user then sees only what
the new role allows."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_it_lets_an_owner_add_a_user_whose_role_then_decides_what_they_see(
    log_in, world, asgi_server, browser
) -> None:
    owner = browser.new_page()
    log_in(owner, asgi_server, "bob", world.password)
    owner.click("#console-link")
    owner.fill("#add-member input[name=username]", "gina")
    owner.fill("#add-member input[name=password]", "a-Strong-passphrase-9")
    owner.select_option("#add-member select[name=role]", "employee")
    owner.click("#add-member button[type=submit]")
    row = owner.locator("#member-gina")
    expect(row).to_contain_text("active")
    row.locator("select[name=role]").select_option("compliance")
    row.locator("text=Change role").click()
    expect(owner.locator("#member-gina select[name=role]")).to_have_value("compliance")
    owner.close()

    gina = browser.new_page()
    log_in(gina, asgi_server, "gina", "a-Strong-passphrase-9")
    expect(gina.locator(".topbar .role")).to_have_text("Compliance")
    gina.click("text=Audit trail")
    expect(gina.locator(".audit-table .action").first).to_be_visible()
    expect(gina.locator(".audit-table")).to_contain_text("membership.role_change")
    response = gina.goto(asgi_server + "/settings/")
    assert response is not None and response.status == 403
    expect(gina.locator("#console-link")).to_have_count(0)
    gina.close()
