"""Sorting the console's fleet table: the order of each column (rows without a value last
either way), the order when none is asked, the header links; and in a real browser (Debian's
Chromium) headers that sort on the server, say how with aria-sort, and keep the order through
the live refresh, on a laptop and on a phone."""

from __future__ import annotations

import re
import ssl
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from tests.support.browser import LAPTOP, PHONE, Demo, console_errors, log_in

from tether.cloud.console.views import (
    FLEET_COLUMNS,
    Alert,
    GatewayRow,
    _sort_headers,
    fleet_order,
    sort_fleet,
)
from tether.cloud.store.records import GatewayRecord

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
WAIT_MS = 30_000  # the bound of every wait on the page (a busy 2-core machine, not a target)


def _row(
    gateway_id: str,
    name: str,
    status: str,
    *,
    tier: str | None = None,
    last_seen: datetime | None = None,
    agent: str | None = None,
    spool: float | None = None,
    cert: datetime | None = None,
    alerts: tuple[str, ...] = (),
) -> GatewayRow:
    gateway = GatewayRecord(
        gateway_id=gateway_id,
        name=name,
        created_at=NOW - timedelta(days=30),
        revoked_at=NOW if status == "revoked" else None,
        linked=status == "linked",
        tier=tier,
        last_seen=last_seen,
        link_since=None,
        agent_version=agent,
        peer=None,
        cert_serial=None,
        cert_not_after=cert,
    )
    return GatewayRow(
        gateway=gateway,
        status=status,
        alerts=tuple(Alert(level, level) for level in alerts),
        spool=spool,
    )


ROWS = [
    _row("gw-a", "attic", "linked", tier="ws", agent="0.10.0", spool=5, cert=NOW + 9 * DAY),
    _row(
        "gw-b",
        "Boiler",
        "offline",
        tier="poll",
        last_seen=NOW - 3 * DAY,
        agent="0.9.2",
        spool=900,
        alerts=("warn", "bad"),
    ),
    _row("gw-c", "cellar", "offline", last_seen=NOW - DAY, agent="0.9.2", alerts=("warn",)),
    _row("gw-d", "dock", "revoked", tier="longpoll", cert=NOW + DAY, alerts=("bad",)),
    _row("gw-e", "entry", "offline"),  # never seen: no tier, agent, spool or certificate
]


def _ids(sort: str, order: str) -> list[str]:
    return [r.gateway.gateway_id for r in sort_fleet(list(ROWS), sort, order, NOW)]


@pytest.mark.parametrize(
    ("sort", "asc", "desc"),
    [
        ("name", "abcde", "edcba"),  # names without regard to case
        ("state", "bcead", "dabce"),  # offline, linked, revoked; equal states by name
        ("tier", "adbce", "bdace"),  # WebSocket, long-poll, poll; none last
        ("last_seen", "bcade", "acbde"),  # the longest silent first; never seen last
        ("agent", "bca", "abc"),  # 0.9.2 before 0.10.0; no agent version last
        ("spool", "abcde", "bacde"),  # no health report last
        ("cert", "dabce", "adbce"),  # the soonest expiry first; none last
        ("alerts", "aecdb", "bdcae"),  # bad ones weigh most, then warnings
    ],
)
def test_each_column_sorts_both_ways_with_missing_values_last(
    sort: str, asc: str, desc: str
) -> None:
    def expanded(letters: str) -> list[str]:
        shown = [f"gw-{x}" for x in letters]
        return shown + sorted(f"gw-{x}" for x in "abcde" if f"gw-{x}" not in shown)

    assert _ids(sort, "asc") == expanded(asc)
    assert _ids(sort, "desc") == expanded(desc)


def test_the_order_asked_for_or_the_default() -> None:
    assert fleet_order({}) == ("state", "asc")  # offline first, as the fleet always was
    assert fleet_order({"sort": "agent"}) == ("agent", "asc")
    assert fleet_order({"sort": "spool"}) == ("spool", "desc")  # its first click: fullest first
    assert fleet_order({"sort": "last_seen", "order": "desc"}) == ("last_seen", "desc")
    assert fleet_order({"sort": "password", "order": "sideways"}) == ("state", "asc")
    assert set(FLEET_COLUMNS) == {
        "name",
        "state",
        "tier",
        "last_seen",
        "agent",
        "spool",
        "cert",
        "alerts",
    }


def test_headers_turn_the_order_over_and_keep_the_filters() -> None:
    headers = {h.label: h for h in _sort_headers("name", "asc", {"q": "north wing"})}
    assert [h.aria_sort for h in headers.values() if h.aria_sort] == ["ascending"]
    assert headers["Gateway"].aria_sort == "ascending"
    assert parse_qs(urlparse(headers["Gateway"].href).query) == {
        "q": ["north wing"],
        "sort": ["name"],
        "order": ["desc"],
    }
    assert parse_qs(urlparse(headers["Spool"].href).query)["order"] == ["desc"]
    assert parse_qs(urlparse(headers["Agent"].href).query)["order"] == ["asc"]
    assert headers["Spool"].css == "num"
    flipped = {h.label: h for h in _sort_headers("name", "desc", {})}
    assert flipped["Gateway"].aria_sort == "descending"
    assert flipped["Gateway"].href == "/console/?sort=name&order=asc"


# --- in the browser ---------------------------------------------------------------------------


def _names(page: Page) -> list[str]:
    return page.locator("#fleet-rows tr[data-gateway-id] td:first-child a").all_inner_texts()


def _sorted_header(page: Page) -> tuple[str, str]:
    header = page.locator("table.sortable th[aria-sort]")
    expect(header).to_have_count(1)
    label = (header.locator("a").text_content() or "").strip("▲▼ \n")
    return label, header.get_attribute("aria-sort") or ""


def test_headers_sort_on_the_server_and_the_live_refresh_keeps_the_order(
    browser: Browser, demo: Demo
) -> None:
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    errors = console_errors(page)
    log_in(page, demo, "admin", demo.admin_password)
    rows = page.locator("#fleet-rows tr[data-gateway-id]")
    expect(page.locator('#fleet-rows tr[data-status="linked"]')).to_have_count(2, timeout=WAIT_MS)
    assert _sorted_header(page) == ("State", "ascending")
    assert _names(page) == ["demo-building-1", "demo-building-2"]

    page.locator("table.sortable thead").get_by_role("link", name="Gateway").click()
    expect(page).to_have_url(re.compile(r"sort=name&order=asc"))
    assert _sorted_header(page) == ("Gateway", "ascending")
    page.locator("table.sortable thead").get_by_role("link", name="Gateway").click()
    expect(page).to_have_url(re.compile(r"sort=name&order=desc"))
    assert _sorted_header(page) == ("Gateway", "descending")
    assert _names(page) == ["demo-building-2", "demo-building-1"]

    # A change the live refresh brings: building-2 revoked. Offline-first (the default) would
    # put it last; the name order asked for keeps it first.
    expect(page.locator("[data-live-stamp]")).to_contain_text("live")
    page.evaluate("document.querySelectorAll('#fleet-rows tr').forEach(r => { r.__before = 1; })")
    revoked = rows.nth(0).get_attribute("data-gateway-id")
    with httpx.Client(
        base_url=demo.url,
        verify=ssl.create_default_context(cafile=str(demo.ca_path)),
        headers={"Authorization": f"Bearer {demo.admin_token}"},
        trust_env=False,
        timeout=30.0,
    ) as api:
        assert api.post(f"/api/v1/gateways/{revoked}/revoke").status_code == 200
    expect(rows.nth(0)).to_have_attribute("data-status", "revoked", timeout=WAIT_MS)
    assert page.evaluate("[...document.querySelectorAll('#fleet-rows tr')].every(r => !r.__before)")
    assert _names(page) == ["demo-building-2", "demo-building-1"]
    assert _sorted_header(page) == ("Gateway", "descending")
    page.goto(demo.url + "/console/")  # the default again: offline first, then linked, revoked
    assert _names(page) == ["demo-building-1", "demo-building-2"]

    # A filter typed (kept in the address by the script) is kept by the sort links too.
    page.goto(demo.url + "/console/?sort=state&order=desc")
    assert _names(page) == ["demo-building-2", "demo-building-1"]  # revoked first
    page.fill("#q", "building-1")
    expect(rows.locator("visible=true")).to_have_count(1)
    page.locator("table.sortable thead").get_by_role("link", name="Agent").click()
    query = parse_qs(urlparse(page.url).query)
    assert query == {"q": ["building-1"], "sort": ["agent"], "order": ["asc"]}
    expect(page.locator("#q")).to_have_value("building-1")
    expect(rows.locator("visible=true")).to_have_count(1)
    assert errors == []
    context.close()

    phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    small = phone.new_page()
    log_in(small, demo, "admin", demo.admin_password)
    sort_by = small.locator("table.sortable thead").get_by_role("link", name="Gateway")
    expect(sort_by).to_be_visible()  # the headers stay, as sort links above the cards
    sort_by.tap()
    expect(small).to_have_url(re.compile(r"sort=name&order=asc"))
    assert _names(small) == ["demo-building-1", "demo-building-2"]
    assert small.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    phone.close()
