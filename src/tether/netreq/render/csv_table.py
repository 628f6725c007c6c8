"""The manifest as CSV: one row per endpoint with every field a spreadsheet or CMDB needs."""

from __future__ import annotations

import csv
import io

from tether.netreq.model import Manifest
from tether.netreq.render.document import ports_text

__all__ = ["COLUMNS", "render"]

COLUMNS = (
    "id",
    "area",
    "host",
    "match",
    "pattern",
    "ports",
    "protocol",
    "direction",
    "customer_data",
    "requirement",
    "lifecycle",
    "replaced_by",
    "sunset",
    "tls_min_version",
    "client_certificate",
    "pin",
    "interception_tolerated",
    "proxy_ok",
    "purpose",
    "if_blocked",
    "notes",
)


def render(m: Manifest) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for e in m.endpoints:
        writer.writerow(
            _cell(value)
            for value in (
                e.id,
                e.area,
                e.host,
                e.match.value,
                e.pattern,
                ports_text(e.ports),
                e.protocol.value,
                e.direction.value,
                e.customer_data.value,
                e.requirement.value,
                e.lifecycle.value,
                " ".join(e.replaced_by),
                e.sunset.isoformat() if e.sunset else "",
                e.tls.min_version if e.tls else "",
                _yes(e.tls.mutual) if e.tls else "",
                e.tls.pin.value if e.tls else "",
                _yes(e.tls.interception_tolerated) if e.tls else "",
                _yes(e.proxy_ok),
                e.purpose,
                e.if_blocked,
                e.notes,
            )
        )
    return buf.getvalue()


def _cell(value: str) -> str:
    """A cell a spreadsheet shows as text: a leading = + - @ (or tab, CR) would start a formula."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
