"""The human document: the familiar table, in Markdown, standalone HTML and CSV."""

from __future__ import annotations

import csv
import io
from html.parser import HTMLParser

import msgspec
import pytest
from tests.support.netreq import own_single

from tether.netreq.catalog import load_reference
from tether.netreq.model import Manifest
from tether.netreq.render import render_document
from tether.netreq.render.csv_table import COLUMNS


def test_markdown_has_the_familiar_columns_and_sections() -> None:
    md = render_document(load_reference("mapped-gateway"), "md")
    assert (
        "| Hostname | Port | Protocol | Direction | Customer data | Needed | Use | If blocked |"
        in md
    )
    assert (
        "| d2c.edge.mapped.com | TCP 443 | WebSocket (TLS 1.3+) | ↑ upload | yes: telemetry |" in md
    )
    for section in (
        "## Endpoints",
        "## TLS and proxies",
        "## Legacy endpoints",
        "## DNS and time",
        "## Change log",
    ):
        assert section in md
    assert "\\*.balena-cloud.com" in md  # escaped, not italics


def test_markdown_escapes_pipes_in_cells() -> None:
    m = own_single()
    ep = msgspec.structs.replace(m.endpoints[0], purpose="a | b")
    md = render_document(msgspec.structs.replace(m, endpoints=(ep, *m.endpoints[1:])), "md")
    assert "a \\| b" in md


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag in ("script", "link", "img"):
            self.external.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_standalone_and_escaped() -> None:
    m = own_single()
    ep = msgspec.structs.replace(m.endpoints[0], purpose="<script>alert(1)</script>")
    page = render_document(msgspec.structs.replace(m, endpoints=(ep, *m.endpoints[1:])), "html")
    assert page.startswith("<!DOCTYPE html>")
    parser = _Collect()
    parser.feed(page)
    assert parser.external == []
    assert parser.tags.count("table") >= 3
    assert "<script>alert(1)</script>" in "".join(parser.text)
    assert "<script>" not in page


def test_csv_has_one_row_per_endpoint() -> None:
    m = load_reference("dt-cloud-connector-legacy")
    rows = list(csv.DictReader(io.StringIO(render_document(m, "csv"))))
    assert tuple(rows[0]) == COLUMNS
    assert len(rows) == len(m.endpoints)
    ntp = next(r for r in rows if r["id"] == "ntp-pool")
    assert ntp["pattern"] == "*.resinio.pool.ntp.org"
    assert ntp["ports"] == "UDP 123"
    assert ntp["tls_min_version"] == ""


def _with_purpose(purpose: str) -> Manifest:
    base = own_single()
    return msgspec.structs.replace(
        base,
        endpoints=tuple(msgspec.structs.replace(e, purpose=purpose) for e in base.endpoints),
    )


def test_csv_cells_cannot_start_a_formula() -> None:
    text = render_document(_with_purpose('=HYPERLINK("http://evil/","click")'), "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows
    assert all(r["purpose"] == '\'=HYPERLINK("http://evil/","click")' for r in rows)
    assert not any(cell[:1] in "=+-@" for r in rows for cell in r.values() if cell)


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_raw_html_from_the_manifest_is_escaped(fmt: str) -> None:
    text = render_document(_with_purpose("Evil <script>alert(1)</script>"), fmt)
    assert "<script>" not in text
    assert "&lt;script&gt;" in text


def test_own_document_states_ipv6_placement_proxy_auth_and_timeouts() -> None:
    text = render_document(own_single(), "md")
    for phrase in ("IPv6", "Place the gateway", "Basic only", "every 30 s", "up to 25 s"):
        assert phrase in text
    assert "| Area | Hostname | TLS |" in text
