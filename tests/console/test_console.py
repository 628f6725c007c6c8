"""The console in a real browser (Debian's Chromium) against a running ``tether demo``.

An admin logs in, sees the fleet, opens a gateway, sends ``ping`` from the form and watches
results arrive without reloading, downloads a firewall format and the document, creates an
enrollment token, reads the audit log; a viewer sees no command form and is refused if they
post one anyway. A screenshot of every page (laptop and phone widths) is kept under
``test-artifacts/console/``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from tests.support.browser import LAPTOP, PHONE, Demo, console_errors, log_in, screenshot
from tests.support.cloudproc import tether_script

WAIT_MS = 30_000  # the bound of every wait on the page (a busy 2-core machine, not a target)


def _admin_api(demo: Demo) -> httpx.Client:
    import ssl

    return httpx.Client(
        base_url=demo.url,
        verify=ssl.create_default_context(cafile=str(demo.ca_path)),
        headers={"Authorization": f"Bearer {demo.admin_token}"},
        trust_env=False,
        timeout=30.0,
    )


@pytest.fixture
def admin_page(browser: Browser, demo: Demo) -> Page:
    context = browser.new_context(viewport=LAPTOP, accept_downloads=True)
    page = context.new_page()
    log_in(page, demo, "admin", demo.admin_password)
    return page


def test_admin_sees_the_fleet_opens_a_gateway_and_watches_a_ping_answer(
    browser: Browser, demo: Demo, artifacts: Path
) -> None:
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    errors = console_errors(page)
    page.goto(demo.url + "/console/")
    expect(page).to_have_url(re.compile(r"/console/login\?next="))
    screenshot(page, artifacts, "login")
    log_in(page, demo, "admin", demo.admin_password)

    rows = page.locator("#fleet-rows tr[data-gateway-id]")
    expect(rows).to_have_count(2, timeout=WAIT_MS)
    expect(page.locator('#fleet-rows tr[data-status="linked"]')).to_have_count(2, timeout=WAIT_MS)
    screenshot(page, artifacts, "fleet")

    page.keyboard.press("/")  # the filter box is one key away
    expect(page.locator("#q")).to_be_focused()
    page.keyboard.type("building-2")
    expect(page.locator("#fleet-rows tr[data-gateway-id]:visible")).to_have_count(1)
    page.fill("#q", "")
    expect(page.locator("#fleet-rows tr[data-gateway-id]:visible")).to_have_count(2)

    page.get_by_role("link", name="demo-building-1").click()
    expect(page.locator("h1")).to_have_text("demo-building-1")
    gateway_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("tr[data-point-id]").first).to_be_visible(timeout=WAIT_MS)
    expect(page.locator(".device svg.spark").first).to_be_visible()

    page.fill("#kind", "ping")
    page.click("#send-command button[type=submit]")
    page.wait_for_url(re.compile(r"\?sent="))
    sent = parse_qs(urlparse(page.url).query)["sent"][0]
    row = page.locator(f'tr[data-command-id="{sent}"]')
    expect(row.locator(".badge.state")).to_have_text("succeeded", timeout=WAIT_MS)
    expect(row).to_contain_text("pong")

    # A command sent elsewhere (the API) appears and finishes on the open page: live, no reload.
    page.evaluate("window.__sameDocument = true")
    with _admin_api(demo) as api:
        answer = api.post(f"/api/v1/gateways/{gateway_id}/commands", json={"kind": "metrics"})
    assert answer.status_code == 201, answer.text
    other = page.locator(f'tr[data-command-id="{answer.json()["id"]}"]')
    expect(other.locator(".badge.state")).to_have_text("succeeded", timeout=WAIT_MS)
    assert page.evaluate("window.__sameDocument === true")
    screenshot(page, artifacts, "gateway")
    assert errors == []  # no script error, no resource or inline code refused by the CSP

    phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    small = phone.new_page()
    log_in(small, demo, "admin", demo.admin_password)
    small.goto(f"{demo.url}/console/gateways/{gateway_id}")
    expect(small.locator(f'tr[data-command-id="{sent}"]')).to_be_visible()
    # no sideways scrolling on a phone
    assert small.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    phone.close()
    context.close()


def test_network_requirements_download_a_firewall_format_and_the_document(
    admin_page: Page, demo: Demo, artifacts: Path
) -> None:
    page = admin_page
    errors = console_errors(page)
    page.get_by_role("link", name="Network").click()
    expect(page.locator("h1")).to_have_text("Network requirements")
    expect(page.locator(".netdoc table").first).to_be_visible()
    screenshot(page, artifacts, "network")

    link = page.locator('tr[data-format="fortigate"] a.file').first
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename.endswith(".conf")
    text = Path(download.path()).read_text()
    assert "config firewall address" in text
    assert f"set tcp-portrange {urlparse(demo.url).port}" in text  # this deployment's port

    with page.expect_download() as info:
        page.get_by_role("link", name="Markdown").click()
    document = Path(info.value.path()).read_text()
    assert document.startswith("# Network requirements")

    with page.expect_download() as info:
        page.locator('tr[data-format="nftables"] a.file').first.click()
    assert "table inet" in Path(info.value.path()).read_text()
    assert errors == []
    page.context.close()


def test_enrollment_audit_users_and_account_pages(
    admin_page: Page, demo: Demo, artifacts: Path
) -> None:
    page = admin_page
    page.get_by_role("link", name="Enrollment").click()
    page.fill("#name", "boiler-room-3")
    page.get_by_role("button", name="Create token").click()
    code = page.locator("#enrollment-code")
    expect(code).to_be_visible()
    assert len(code.input_value()) > 40
    expect(page.locator("table.data")).to_contain_text("boiler-room-3")
    screenshot(page, artifacts, "tokens")
    # Withdrawn before any gateway used it: asked first, then shown revoked and audited.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke the token").first.click()
    expect(page.locator("table.data .badge").first).to_have_text("revoked")

    page.get_by_role("link", name="Audit").click()
    expect(page.locator("#audit-rows")).to_contain_text("token.create")
    expect(page.locator("#audit-rows")).to_contain_text("session.login")
    expect(page.get_by_role("link", name="Export CSV")).to_have_attribute(
        "href", "/api/v1/audit/export?format=csv"
    )
    with page.expect_download() as info:
        page.get_by_role("link", name="Export JSON lines").click()
    lines = [json.loads(x) for x in Path(info.value.path()).read_text().splitlines()]
    assert any(e["action"] == "token.create" and e["actor"] == "admin (admin)" for e in lines)
    assert any(e["action"] == "token.revoke" and e["actor"] == "admin (admin)" for e in lines)
    screenshot(page, artifacts, "audit")

    page.get_by_role("link", name="Users").click()
    page.fill("#new-username", "olga")
    page.select_option("#new-role", "operator")
    page.get_by_role("button", name="Create user").click()
    expect(page.locator("#secret-value")).to_be_visible()
    expect(page.locator('tr[data-username="olga"]')).to_contain_text("active")
    screenshot(page, artifacts, "users")

    page.get_by_role("link", name="admin", exact=True).click()
    expect(page.locator("h1")).to_have_text("Your account")
    screenshot(page, artifacts, "account")
    page.context.close()


def test_a_viewer_cannot_send_a_command(browser: Browser, demo: Demo, artifacts: Path) -> None:
    made = subprocess.run(
        [str(tether_script()), "user", "create", "vic", "--role", "viewer", "--json"],
        env=demo.cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    password = json.loads(made.stdout)["password"]

    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    log_in(page, demo, "vic", password)
    expect(page.locator(".mainnav")).not_to_contain_text("Users")
    expect(page.locator(".mainnav")).not_to_contain_text("Enrollment")
    page.get_by_role("link", name="demo-building-2").click()
    expect(page.locator("h1")).to_have_text("demo-building-2")
    expect(page.locator("#send-command")).to_have_count(0)
    expect(page.locator("#commands")).to_contain_text("can see commands but not send them")
    gateway_id = page.url.rsplit("/", 1)[1]

    # Posting anyway, with the session's own CSRF token, is refused by the console and the API.
    statuses = page.evaluate(
        """async (gatewayId) => {
            const csrf = document.querySelector('meta[name="csrf-token"]').content;
            const form = new URLSearchParams({csrf_token: csrf, kind: "ping", args: "{}"});
            const viaConsole = await fetch(`/console/gateways/${gatewayId}/commands`,
                {method: "POST", body: form, redirect: "manual"});
            const viaApi = await fetch(`/api/v1/gateways/${gatewayId}/commands`, {
                method: "POST",
                headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
                body: JSON.stringify({kind: "ping"})});
            return [viaConsole.status, viaApi.status];
        }""",
        gateway_id,
    )
    assert statuses == [403, 403]
    with _admin_api(demo) as api:
        commands = api.get("/api/v1/commands", params={"gateway": gateway_id}).json()
    assert not [c for c in commands if c["created_by"].startswith("vic")]
    screenshot(page, artifacts, "gateway-viewer")

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/console/login\?bye=1"))
    page.goto(f"{demo.url}/console/gateways/{gateway_id}")
    expect(page).to_have_url(re.compile(r"/console/login\?next="))
    context.close()


def test_every_page_fits_a_phone_screen(browser: Browser, demo: Demo, artifacts: Path) -> None:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    errors = console_errors(page)
    log_in(page, demo, "admin", demo.admin_password)
    gateway_id = page.locator("tr[data-gateway-id]").first.get_attribute("data-gateway-id")
    pages = {
        "fleet": "/console/",
        "gateway": f"/console/gateways/{gateway_id}",
        "network": "/console/network",
        "tokens": "/console/tokens",
        "audit": "/console/audit",
        "users": "/console/users",
        "account": "/console/account",
    }
    too_wide = []
    for name, path in pages.items():
        page.goto(demo.url + path)
        expect(page.locator("h1").first).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        if width > PHONE["width"] + 1:
            too_wide.append(f"{name}: {width} px")
        screenshot(page, artifacts, f"{name}-phone")
    assert too_wide == []
    assert errors == []
    context.close()


def test_an_open_page_says_so_when_its_session_ends(
    browser: Browser, demo: Demo, artifacts: Path
) -> None:
    with _admin_api(demo) as api:
        made = api.post("/api/v1/users", json={"username": "tess", "role": "operator"})
        assert made.status_code == 201, made.text
        password = made.json()["password"]
        context = browser.new_context(viewport=LAPTOP)
        page = context.new_page()
        log_in(page, demo, "tess", password)
        expect(page.locator("[data-live-stamp]")).to_contain_text("live")
        assert api.post("/api/v1/users/tess/disable").status_code == 200  # her sessions end
    banner = page.locator("#live-banner")
    expect(banner).to_be_visible(timeout=WAIT_MS)
    expect(banner).to_contain_text("Your session ended")
    screenshot(page, artifacts, "session-ended")
    banner.get_by_role("link", name="Log in again").click()
    expect(page).to_have_url(re.compile(r"/console/login\?next="))
    context.close()


#: Text whose contrast with its background is below WCAG AA (4.5:1; 3:1 for large text), as
#: "ratio tag.class 'text'" lines; backgrounds are found up the tree (the first opaque one).
_LOW_CONTRAST = """() => {
  function rgba(c) { return (c.match(/[\\d.]+/g) || ["0", "0", "0", "0"]).map(Number); }
  function lum(c) {
    const [r, g, b] = rgba(c).slice(0, 3).map(v => {
      v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  }
  function background(el) {
    for (; el; el = el.parentElement) {
      const c = getComputedStyle(el).backgroundColor, a = rgba(c);
      if (a.length < 4 || a[3] > 0.9) { return c; }
    }
    return "rgb(255, 255, 255)";
  }
  const low = new Set();
  document.querySelectorAll("body *").forEach(el => {
    if (el.getClientRects().length === 0) { return; }
    const text = [...el.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent)
      .join("").trim();
    if (!text) { return; }
    const style = getComputedStyle(el), a = lum(style.color), b = lum(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight, 10) >= 700;
    const needed = size >= 24 || (size >= 18.66 && bold) ? 3 : 4.5;
    if (ratio < needed) {
      const tag = `${el.tagName.toLowerCase()}.${el.className}`;
      low.add(`${ratio.toFixed(2)} ${tag} '${text.slice(0, 24)}'`);
    }
  });
  return [...low];
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_and_buttons_are_readable_in_light_and_dark(
    browser: Browser, demo: Demo, scheme: str
) -> None:
    context = browser.new_context(viewport=LAPTOP, color_scheme=scheme)  # type: ignore[arg-type]
    page = context.new_page()
    log_in(page, demo, "admin", demo.admin_password)
    gateway_id = page.locator("tr[data-gateway-id]").first.get_attribute("data-gateway-id")
    low: list[str] = []
    for path in ("/console/", f"/console/gateways/{gateway_id}", "/console/tokens"):
        page.goto(demo.url + path)
        expect(page.locator("h1").first).to_be_visible()
        low += [f"{path}: {x}" for x in page.evaluate(_LOW_CONTRAST)]
    for path in ("/console/users", "/console/account", "/console/login?bye=1"):
        page.goto(demo.url + path)
        low += [f"{path}: {x}" for x in page.evaluate(_LOW_CONTRAST)]
    assert low == []
    context.close()


def test_live_refresh_keeps_what_the_reader_opened_and_the_keyboard_focus(
    browser: Browser, demo: Demo
) -> None:
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    log_in(page, demo, "admin", demo.admin_password)
    gateway_id = page.locator("tr[data-gateway-id]").first.get_attribute("data-gateway-id")
    with _admin_api(demo) as api:
        sent = api.post(f"/api/v1/gateways/{gateway_id}/commands", json={"kind": "metrics"})
    assert sent.status_code == 201, sent.text
    page.goto(f"{demo.url}/console/gateways/{gateway_id}")
    result = page.locator(f'details[data-keep="result-{sent.json()["id"]}"]')
    expect(result).to_be_visible(timeout=WAIT_MS)  # the agent answered
    result.locator("summary").click()
    history = page.locator('details[data-keep="tier-history"]')
    history.locator("summary").click()
    page.locator("h1").click()  # the reader moves on; no field of the regions has the focus
    page.evaluate(
        "document.querySelectorAll('details[data-keep]').forEach(d => { d.__before = true; })"
    )
    # both regions were rendered again (new elements) while the page stayed open ...
    page.wait_for_function(
        "() => [...document.querySelectorAll('details[data-keep]')].every(d => !d.__before)",
        timeout=WAIT_MS,
    )
    # ... and what was open is open
    assert result.evaluate("d => d.open")
    assert history.evaluate("d => d.open")

    # On the fleet, a keyboard user on a gateway's link stays on it when the rows change.
    page.goto(demo.url + "/console/")
    rows = page.locator("#fleet-rows tr[data-gateway-id]")
    expect(rows).to_have_count(2)
    ids = [rows.nth(i).get_attribute("data-gateway-id") for i in range(2)]
    other = ids[1] if ids[0] == gateway_id else ids[0]
    link = page.locator(f'#fleet-rows a[href="/console/gateways/{other}"]')
    link.focus()
    page.evaluate("document.activeElement.__before = true")
    with _admin_api(demo) as api:  # a change every row list shows: a revoked gateway
        assert api.post(f"/api/v1/gateways/{gateway_id}/revoke").status_code == 200
    expect(page.locator(f'#fleet-rows tr[data-gateway-id="{gateway_id}"]')).to_have_attribute(
        "data-status", "revoked", timeout=WAIT_MS
    )
    assert page.evaluate("document.activeElement.__before") is None  # a new element ...
    expect(link).to_be_focused()  # ... with the focus
    context.close()


def test_a_filter_that_hides_every_row_says_so(admin_page: Page, demo: Demo) -> None:
    page = admin_page
    page.goto(demo.url + "/console/")
    rows = page.locator("#fleet-rows tr[data-gateway-id]")
    expect(rows.first).to_be_visible()
    total = rows.count()
    page.fill("#q", "no gateway is called this")
    expect(page.locator("#fleet-rows tr[data-gateway-id]:visible")).to_have_count(0)
    expect(page.locator("#fleet-rows")).to_contain_text("Nothing matches this filter.")
    expect(page.locator('[data-filter-count="fleet-rows"]')).to_have_text(f"0 of {total} shown")
    page.fill("#q", "")
    expect(page.locator("#fleet-rows tr[data-gateway-id]:visible")).to_have_count(total)
    expect(page.locator("#fleet-rows")).not_to_contain_text("Nothing matches")
    expect(page.locator('[data-filter-count="fleet-rows"]')).to_have_text("")

    page.goto(demo.url + f"/console/gateways/{rows.first.get_attribute('data-gateway-id')}")
    expect(page.locator("tr[data-point-id]").first).to_be_visible(timeout=WAIT_MS)
    page.fill("#pq", "no point is called this")
    expect(page.locator("#points-body")).to_contain_text("Nothing matches this filter.")
    page.context.close()
