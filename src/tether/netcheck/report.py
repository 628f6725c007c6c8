"""Preflight results: one :class:`CheckResult` per probe, gathered in a :class:`CheckReport`.

Both are frozen :mod:`msgspec` structs, so the agent can send a report to the cloud and the cloud
can store it exactly as the command line tool prints it (``--json``).
"""

from __future__ import annotations

import datetime as dt
import enum

import msgspec

__all__ = ["Check", "CheckReport", "CheckResult", "Status", "decode_report", "encode_report"]


class Status(enum.StrEnum):
    """The verdict of one probe. ``SKIP`` means "not applicable here" and does not count."""

    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Status.SKIP: 0, Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}


class Check(enum.StrEnum):
    """The probe families, in the order a connection needs them."""

    ROUTE = "route"
    DNS = "dns"
    CAPTIVE = "captive-portal"
    PROXY = "proxy"
    TCP = "tcp"
    TLS = "tls"
    APP = "app"
    WEBSOCKET = "websocket"
    LONG_POLL = "long-poll"
    NTP = "ntp"
    TIME = "time"
    IDLE = "idle"


class CheckResult(msgspec.Struct, frozen=True, kw_only=True):
    """One probe's verdict: what was seen (``finding``) and what to do about it (``fix``)."""

    check: Check
    target: str  # what was probed: "api.example.com:443 (IPv4)", a resolver, an NTP server…
    status: Status
    finding: str  # one line, for people
    fix: str = ""  # one concrete action, empty when nothing is to be done
    endpoint: str | None = None  # the (first) manifest endpoint id this result is about
    # True when the fix is a firewall/proxy allow rule for ``endpoints``: the tool then renders
    # their rules in the firewall format the user named.
    firewall: bool = False
    details: dict[str, str] = {}
    elapsed_ms: float = 0.0
    # Every endpoint this result is about: a probe of a name and port that several endpoints
    # share (DNS, route, TCP, TLS, one application answer) runs once for all of them. Empty in
    # reports written before this field existed: ``endpoint`` alone then.
    endpoints: tuple[str, ...] = ()

    def about(self) -> tuple[str, ...]:
        """The ids of the endpoints this result is about (none for a site-wide result)."""
        if self.endpoints:
            return self.endpoints
        return (self.endpoint,) if self.endpoint else ()


class CheckReport(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one preflight run found, for one manifest, from one place in the network."""

    manifest_product: str
    manifest_version: str
    manifest_publisher: str
    started_at: dt.datetime
    finished_at: dt.datetime
    host: str = ""  # where the check ran (host name)
    proxy: str | None = None  # the proxy in use, password redacted
    resolvers: tuple[str, ...] = ()
    results: tuple[CheckResult, ...] = ()

    @property
    def status(self) -> Status:
        """The worst verdict (``PASS`` when everything passed or was skipped)."""
        worst = Status.PASS
        for result in self.results:
            if result.status.severity > worst.severity:
                worst = result.status
        return worst

    @property
    def exit_code(self) -> int:
        """0 pass, 1 warn, 2 fail."""
        return self.status.severity

    def counts(self) -> dict[Status, int]:
        counts = dict.fromkeys(Status, 0)
        for result in self.results:
            counts[result.status] += 1
        return counts

    def for_endpoint(self, endpoint_id: str) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if endpoint_id in r.about())

    def blocked_endpoints(self) -> tuple[str, ...]:
        """Ids of endpoints whose fix is a firewall rule (a WARN or FAIL with ``firewall``)."""
        seen: dict[str, None] = {}
        for r in self.results:
            if r.firewall and r.status in (Status.WARN, Status.FAIL):
                seen.update(dict.fromkeys(r.about()))
        return tuple(seen)


def encode_report(report: CheckReport) -> bytes:
    """JSON bytes (what ``--json`` prints and what the agent uploads)."""
    return msgspec.json.encode(report)


def decode_report(data: bytes | str) -> CheckReport:
    return msgspec.json.decode(data, type=CheckReport)
