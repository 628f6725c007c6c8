"""Support access in a real browser (Debian's Chromium) against a running ``tether demo``.

A support user opens a gateway and is offered no command form, only a note saying who can give
a grant; an operator gives one from the gateway's "Support access" card (a refused one is said
in words); the support user then sees until when they hold it and pings that gateway, and no
other; the operator revokes it and the form is gone again.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import httpx
from playwright.sync_api import Browser, Page, expect
from tests.support.browser import LAPTOP, Demo, console_errors, log_in, screenshot

WAIT_MS = 30_000  # the bound of every wait on the page (a busy 2-core machine, not a target)
PASSWORD = "support passphrase"


def _admin_api(demo: Demo) -> httpx.Client:
    return httpx.Client(
        base_url=demo.url,
        verify=ssl.create_default_context(cafile=str(demo.ca_path)),
        headers={"Authorization": f"Bearer {demo.admin_token}"},
        trust_env=False,
        timeout=30.0,
    )


def _open(page: Page, demo: Demo, gateway_id: str) -> None:
    page.goto(f"{demo.url}/console/gateways/{gateway_id}")
    expect(page.locator("h1")).to_be_visible()


def test_support_reaches_a_gateway_only_while_an_operator_grants_it(
    browser: Browser, demo: Demo, artifacts: Path
) -> None:
    with _admin_api(demo) as api:
        for username, role in (("sam", "support"), ("olga", "operator")):
            made = api.post(
                "/api/v1/users", json={"username": username, "role": role, "password": PASSWORD}
            )
            assert made.status_code == 201, made.text
        gateways = {g["name"]: g["id"] for g in api.get("/api/v1/gateways").json()}
    granted_id, other_id = gateways["demo-building-1"], gateways["demo-building-2"]

    sam = browser.new_context(viewport=LAPTOP).new_page()
    sam_errors = console_errors(sam)
    log_in(sam, demo, "sam", PASSWORD)
    olga = browser.new_context(viewport=LAPTOP).new_page()
    olga_errors = console_errors(olga)
    log_in(olga, demo, "olga", PASSWORD)

    # Without a grant: no form, a note saying who gives one.
    _open(sam, demo, granted_id)
    expect(sam.locator("#send-command")).to_have_count(0)
    expect(sam.locator("#needs-grant")).to_contain_text("only under a support grant")
    expect(sam.locator("#needs-grant")).to_contain_text("an admin or operator")
    expect(sam.locator("#my-grant")).to_contain_text("You hold no support grant")
    expect(sam.locator("#my-grant")).to_contain_text(f"tether support grant {granted_id}")
    expect(sam.locator("#grant-support")).to_have_count(0)  # not theirs to give
    screenshot(sam, artifacts, "support-without-grant")

    # The operator's card: nobody holds a grant yet; a reason of blanks is refused in words.
    _open(olga, demo, granted_id)
    card = olga.locator("#support")
    expect(card.get_by_role("heading", name="Support access")).to_be_visible()
    expect(card).to_contain_text("No support user holds a grant for this gateway now.")
    card.get_by_label("Support user").select_option("sam")
    card.get_by_label("For (hours)").fill("2")
    card.get_by_label("Reason").fill("   ")
    with olga.expect_response(re.compile(r"/support-grants$")) as answer:
        card.get_by_role("button", name="Grant access").click()
    assert answer.value.status == 400
    expect(olga.locator("#support").get_by_role("alert")).to_contain_text("may not be empty")
    expect(olga.locator("#support").get_by_label("For (hours)")).to_have_value("2")  # kept

    card = olga.locator("#support")
    card.get_by_label("Reason").fill("ticket 4711: readings stopped")
    card.get_by_role("button", name="Grant access").click()
    olga.wait_for_url(re.compile(rf"/console/gateways/{granted_id}#support$"))
    row = olga.locator("#support tr[data-grant-id]")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("sam")
    expect(row).to_contain_text("ticket 4711: readings stopped")
    expect(row).to_contain_text("olga (operator)")
    expect(row).to_contain_text("in 1 h")  # until: two hours from now, less a moment
    screenshot(olga, artifacts, "support-access-card")

    # With the grant: the support user sees until when, and pings that gateway.
    _open(sam, demo, granted_id)
    expect(sam.locator("#my-grant")).to_contain_text(
        "You hold a support grant for this gateway until"
    )
    expect(sam.locator("#my-grant")).to_contain_text("given by olga (operator)")
    options = sam.locator("#kinds option")
    assert sorted(options.evaluate_all("os => os.map(o => o.value)")) == ["metrics", "ping"]
    sam.fill("#kind", "ping")
    sam.click("#send-command button[type=submit]")
    sam.wait_for_url(re.compile(r"\?sent="))
    sent = sam.locator("tr.highlight[data-command-id]")
    expect(sent).to_have_attribute("data-state", "succeeded", timeout=WAIT_MS)
    expect(sent).to_contain_text("sam (support)")
    screenshot(sam, artifacts, "support-with-grant")
    _open(sam, demo, other_id)  # another gateway: no grant there
    expect(sam.locator("#send-command")).to_have_count(0)
    expect(sam.locator("#my-grant")).to_contain_text("You hold no support grant")

    # Revoked: the card is empty again, and so is the support user's form.
    _open(olga, demo, granted_id)
    olga.once("dialog", lambda dialog: dialog.accept())
    olga.locator("#support").get_by_role("button", name="Revoke sam's support grant").click()
    olga.wait_for_url(re.compile(r"#support$"))
    expect(olga.locator("#support tr[data-grant-id]")).to_have_count(0)
    expect(olga.locator("#support")).to_contain_text("No support user holds a grant")
    _open(sam, demo, granted_id)
    expect(sam.locator("#send-command")).to_have_count(0)
    expect(sam.locator("#my-grant")).to_contain_text("You hold no support grant")

    assert sam_errors == []
    assert len(olga_errors) == 1, olga_errors  # the 400 answer above, as the browser reports it
    assert "status of 400" in olga_errors[0]

    with _admin_api(demo) as api:
        audit = api.get("/api/v1/audit", params={"action": "support.*"}).json()
        assert [(e["action"], e["actor"]) for e in audit] == [
            ("support.revoke", "olga (operator)"),
            ("support.grant", "olga (operator)"),
        ]
        sent_by_sam = api.get(
            "/api/v1/audit", params={"actor": "sam (support)", "action": "command.*"}
        ).json()
        assert [e["action"] for e in sent_by_sam] == ["command.send"]
        assert sent_by_sam[0]["detail"]["grant"] == audit[1]["target"]
