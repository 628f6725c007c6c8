"""Showing a report: table, JSON round trip, exit codes, and fixes in a firewall's terms."""

from __future__ import annotations

import ast
import datetime as dt
import io
import json
import subprocess
import sys

import pytest
from rich.console import Console

from tether.netcheck.render import firewall_fix, print_report, report_json
from tether.netcheck.report import Check, CheckReport, CheckResult, Status, decode_report
from tether.netreq.own import DeploymentSettings, build_own_manifest
from tether.netreq.render import UnknownFormat

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
MANIFEST = build_own_manifest(
    DeploymentSettings(hostname="tether.site.test", area_hostnames={"ingest": "ingest.site.test"})
)


def report(*results: CheckResult) -> CheckReport:
    return CheckReport(
        manifest_product="tether gateway",
        manifest_version=MANIFEST.version,
        manifest_publisher="tether",
        started_at=NOW,
        finished_at=NOW,
        host="site-laptop",
        proxy="http://alice:***@proxy:3128",
        results=results,
    )


PASS_TLS = CheckResult(
    check=Check.TLS,
    target="tether.site.test:443",
    status=Status.PASS,
    finding="TLSv1.3",
    endpoint="control",
)
WARN_WS = CheckResult(
    check=Check.WEBSOCKET,
    target="tether.site.test:443/link",
    status=Status.WARN,
    finding="WebSocket upgrade refused",
    fix="allow WebSocket upgrades",
    endpoint="control",
    firewall=True,
)
FAIL_TCP = CheckResult(
    check=Check.TCP,
    target="ingest.site.test:443 (IPv4)",
    status=Status.FAIL,
    finding="TCP 443 to 192.0.2.9 refused",
    fix="allow outbound TCP 443",
    endpoint="ingest",
    firewall=True,
)
SKIP = CheckResult(check=Check.PROXY, target="HTTPS_PROXY", status=Status.SKIP, finding="none")


@pytest.mark.parametrize(
    ("results", "status", "code"),
    [
        ((), Status.PASS, 0),
        ((PASS_TLS, SKIP), Status.PASS, 0),
        ((PASS_TLS, WARN_WS), Status.WARN, 1),
        ((WARN_WS, FAIL_TCP, PASS_TLS), Status.FAIL, 2),
    ],
)
def test_verdict_and_exit_code(results: tuple[CheckResult, ...], status: Status, code: int) -> None:
    r = report(*results)
    assert r.status is status
    assert r.exit_code == code


def test_json_round_trip() -> None:
    original = report(PASS_TLS, WARN_WS, FAIL_TCP)
    data = report_json(original)
    assert decode_report(data) == original
    parsed = json.loads(data)
    assert parsed["results"][2]["status"] == "fail"
    assert "firewall_fix" not in parsed


def test_fixes_only_for_blocked_endpoints() -> None:
    r = report(PASS_TLS, FAIL_TCP)
    fix = firewall_fix(MANIFEST, r, "fqdn-exact")
    assert fix is not None
    assert "ingest.site.test" in fix.text
    assert "tether.site.test" not in fix.text.replace("# ", "").split("\n", 5)[-1]
    data = json.loads(report_json(r, fix))
    assert data["firewall_fix"]["format"] == "fqdn-exact"
    assert decode_report(report_json(r, fix)) == r  # extra key ignored by readers

    assert firewall_fix(MANIFEST, report(PASS_TLS), "fqdn") is None
    with pytest.raises(UnknownFormat):
        firewall_fix(MANIFEST, report(PASS_TLS), "iptables-by-hand")


def test_table() -> None:
    out = io.StringIO()
    r = report(PASS_TLS, WARN_WS, FAIL_TCP, SKIP)
    print_report(
        r,
        Console(file=out, width=200, color_system=None),
        fix=firewall_fix(MANIFEST, r, "squid"),
    )
    text = out.getvalue()
    assert "FAIL" in text
    assert "TCP 443 to 192.0.2.9 refused" in text
    assert "→ allow outbound TCP 443" in text
    assert "Result: FAIL" in text
    assert "exit code 2" in text
    assert "Allow rules for the blocked endpoints (squid)" in text
    assert "dstdomain" in text
    assert "ingest.site.test" in text
    assert "alice:***@proxy" in text


def test_hint_when_no_format_named() -> None:
    out = io.StringIO()
    print_report(report(FAIL_TCP), Console(file=out, width=200), formats_hint=("fqdn", "squid"))
    assert "--firewall-format FORMAT" in out.getvalue()


def test_nftables_fix_adds_to_the_sites_rules_and_replaces_nothing() -> None:
    fix = firewall_fix(MANIFEST, report(PASS_TLS, FAIL_TCP), "nftables")
    assert fix is not None
    commands = [line for line in fix.file(".nft").splitlines() if line and not line.startswith("#")]
    assert not any(line.startswith(("delete", "flush")) for line in commands)
    inserted = [line for line in commands if line.startswith("insert rule inet tether forward ")]
    assert inserted
    assert all(line.endswith("tcp dport 443 accept") for line in inserted)
    # No drop rule of its own: the site's full ruleset keeps restricting everything else.
    assert not any(line.strip().endswith("drop") for line in commands)


SHARED_DNS = CheckResult(
    check=Check.DNS,
    target="tether.site.test @ 127.0.0.53:53 (resolv.conf)",
    status=Status.FAIL,
    finding="127.0.0.53:53 (resolv.conf) says tether.site.test does not exist (NXDOMAIN)",
    fix="ask the DNS admins why 127.0.0.53:53 (resolv.conf) answers NXDOMAIN for "
    "tether.site.test (DNS filtering or split horizon): it must resolve to its public address",
    endpoint="control",
    endpoints=("control", "enrollment", "ingest", "updates", "logs", "support"),
)
LONG_TARGET = CheckResult(
    check=Check.TCP,
    target="localhost:28443 (IPv6)",
    status=Status.WARN,
    finding="TCP 28443 to ::1 refused (TCP reset): a firewall rejects it, or nothing listens "
    "there; IPv4 works, so the gateway falls back late",
    fix="allow outbound TCP 28443 over IPv6 to localhost too, or remove the IPv6 default route",
    endpoint="control",
    endpoints=("control", "enrollment"),
    firewall=True,
)


def test_piped_table_neither_wraps_nor_cuts_a_cell() -> None:
    out = io.StringIO()  # not a terminal: as `tether net check | less` or `> report.txt`
    console = Console(file=out, width=80)
    assert not console.is_terminal
    r = report(SHARED_DNS, LONG_TARGET, FAIL_TCP, WARN_WS)
    print_report(r, console, formats_hint=("fqdn", "squid"))
    lines = out.getvalue().splitlines()
    for result in r.results:
        # every cell whole, on the row's one line, with the endpoints it is about
        [row] = [line for line in lines if result.target in line]
        assert result.finding in row
        assert f"→ {result.fix}" in row
        assert f"[{', '.join(result.about())}]" in row
    assert any(
        line.startswith("Add --firewall-format FORMAT") and "squid)." in line for line in lines
    )
    assert max(len(line) for line in lines) < 600  # sized to its cells, not to the pipe width


def test_terminal_table_names_every_endpoint_of_a_shared_row() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True, color_system=None)
    print_report(report(SHARED_DNS), console)
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 120
    for endpoint_id in SHARED_DNS.endpoints:
        assert endpoint_id in text


def test_reports_without_the_endpoints_field_still_read() -> None:
    data = json.loads(report_json(report(FAIL_TCP)))
    del data["results"][0]["endpoints"]  # as an agent of the previous release uploads it
    old = decode_report(json.dumps(data))
    assert old.results[0].about() == ("ingest",)
    assert old.blocked_endpoints() == ("ingest",)
    assert old.for_endpoint("ingest") == old.results
    shared = report(SHARED_DNS, LONG_TARGET)
    assert shared.blocked_endpoints() == ("control", "enrollment")
    assert shared.for_endpoint("logs") == (SHARED_DNS,)


def test_the_preflight_loads_no_part_of_the_command_line() -> None:
    probe = (
        "import sys, tether.netcheck.render, tether.netcheck.command; "
        "print(sorted(m for m in sys.modules if m.startswith(('tether.netcheck', 'tether.cli'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = ast.literal_eval(done.stdout)
    assert "tether.netcheck.render" in loaded
    assert [m for m in loaded if m == "tether.cli" or m.startswith("tether.cli.")] == []
