"""The console's audit log in a real browser (Debian's Chromium), filtered by the server: who
revoked a gateway, every action of a family, nothing found said in words, a filter that cannot
mean anything refused in words, and page after page of a filtered log keeping its filters."""

from __future__ import annotations

import re
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
from playwright.sync_api import Browser, expect
from tests.support.browser import LAPTOP, Demo, console_errors, log_in, screenshot

WAIT_MS = 30_000  # the bound of every wait on the page (a busy 2-core machine, not a target)
BOOTSTRAP = "bootstrap token (admin)"


def _admin_api(demo: Demo) -> httpx.Client:
    return httpx.Client(
        base_url=demo.url,
        verify=ssl.create_default_context(cafile=str(demo.ca_path)),
        headers={"Authorization": f"Bearer {demo.admin_token}"},
        trust_env=False,
        timeout=30.0,
    )


def test_the_audit_page_filters_the_whole_log_and_pages_keep_the_filters(
    browser: Browser, demo: Demo, artifacts: Path
) -> None:
    with _admin_api(demo) as api:
        gateway_id = api.get("/api/v1/gateways").json()[0]["id"]
        assert api.post(f"/api/v1/gateways/{gateway_id}/revoke").status_code == 200
        made = [
            api.post("/api/v1/enrollment-tokens", json={"name": f"site-{i}"}) for i in range(101)
        ]
        assert {m.status_code for m in made} == {201}
        token_id = made[0].json()["token_id"]
        assert api.post(f"/api/v1/enrollment-tokens/{token_id}/revoke").status_code == 200
        created = api.get("/api/v1/audit", params={"action": "token.create", "limit": 10_000})
        total_created = len(created.json())
    assert total_created >= 101

    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    errors = console_errors(page)
    log_in(page, demo, "admin", demo.admin_password)
    page.get_by_role("link", name="Audit").click()
    expect(page.locator("h1")).to_have_text("Audit log")
    rows = page.locator("#audit-rows tr[data-audit-id]")

    # Who revoked the gateway: every field has its label, and "/" reaches the first one.
    page.keyboard.press("/")
    expect(page.get_by_label("Actor")).to_be_focused()
    page.get_by_label("Action").fill("gateway.revoke")
    page.get_by_label("Target").fill(gateway_id)
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"/console/audit\?.*action=gateway\.revoke"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(BOOTSTRAP)
    expect(page.get_by_label("Target")).to_have_value(gateway_id)  # the form keeps the filter
    screenshot(page, artifacts, "audit-filtered")

    # Every token.* action, across the whole log: the newest hundred, then the rest.
    page.get_by_label("Target").fill("")
    page.get_by_label("Action").fill("token.*")
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(100)
    actions = set(rows.evaluate_all("rows => rows.map(r => r.dataset.action)"))
    assert actions == {"token.create", "token.revoke"}
    assert "action=token.%2A" in page.get_by_role("link", name="Export CSV").get_attribute("href")

    page.get_by_label("Action").fill("token.create")
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(100)
    page.get_by_role("link", name="Older entries").click()
    query = parse_qs(urlparse(page.url).query)
    assert query["action"] == ["token.create"]
    assert "before" in query
    expect(rows).to_have_count(total_created - 100)
    assert set(rows.evaluate_all("rows => rows.map(r => r.dataset.action)")) == {"token.create"}
    expect(page.get_by_label("Action")).to_have_value("token.create")
    page.get_by_role("link", name="Newest").click()
    expect(rows).to_have_count(100)
    assert parse_qs(urlparse(page.url).query) == {"action": ["token.create"]}

    # A time window in UTC, as the console shows every time; none in the future.
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    page.get_by_label("Since (UTC)").fill(later)
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(0)
    expect(page.locator("#audit-rows")).to_have_text("No entry matches these filters.")
    expect(page.get_by_label("Since (UTC)")).to_have_value(later)
    earlier = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    page.get_by_label("Since (UTC)").fill(earlier)
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(100)

    # A filter that cannot mean anything is said so, and nothing is shown as if it matched.
    assert errors == []  # (the 400 answer below is one, as the browser reports it)
    page.get_by_label("Action").fill("token*")
    with page.expect_response(re.compile(r"/console/audit\?")) as answer:
        page.get_by_role("button", name="Apply").click()
    assert answer.value.status == 400
    expect(page.get_by_role("alert")).to_contain_text("action must be an action")
    expect(rows).to_have_count(0)
    expect(page.locator("#audit-rows")).to_contain_text("the filter above could not be applied")
    expect(page.get_by_label("Action")).to_have_value("token*")

    page.get_by_role("link", name="Clear filters").click()
    expect(rows).to_have_count(100)
    expect(page.get_by_label("Action")).to_have_value("")
    expect(page.get_by_role("link", name="Export CSV")).to_have_attribute(
        "href", "/api/v1/audit/export?format=csv"
    )
    assert len(errors) == 1
    assert "status of 400" in errors[0]
    context.close()
