"""``tether net check`` end to end through the command line, against the test bed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.support.testbed.appserver import AppServer
from tests.support.testbed.dnsserver import DNSServer
from typer.testing import CliRunner

from tether.cli import app as cli
from tether.netcheck.report import decode_report
from tether.netreq.loader import manifest_to_json
from tether.netreq.own import DeploymentSettings, build_own_manifest

HOST = "tether.site.test"


def _manifest(tmp_path: Path, port: int, **hostnames: str) -> Path:
    m = build_own_manifest(DeploymentSettings(hostname=HOST, port=port, area_hostnames=hostnames))
    path = tmp_path / "manifest.json"
    path.write_bytes(manifest_to_json(m))
    return path


def _run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["net", "check", *args], env={"COLUMNS": "220"})
    return result.exit_code, result.stdout


def _common(tmp_path: Path, dns: DNSServer, ca_file: Path) -> list[str]:
    return [
        "--resolver",
        f"127.0.0.1:{dns.port}",
        "--ca",
        str(ca_file),
        "--lease-root",
        str(tmp_path),
        "--timeout",
        "3",
    ]


def test_json_pass(
    tmp_path: Path,
    app_factory: Callable[..., AppServer],
    dns_factory: Callable[..., DNSServer],
    ca_file: Path,
) -> None:
    app = app_factory([HOST])
    dns = dns_factory({HOST: ["127.0.0.1"]})
    code, out = _run(
        ["-m", str(_manifest(tmp_path, app.port)), "--json", *_common(tmp_path, dns, ca_file)]
    )
    report = decode_report(out)
    assert code == 0, out
    assert report.exit_code == 0
    assert {r.endpoint for r in report.results} >= {"control", "ingest"}


def test_warning_exits_1(
    tmp_path: Path,
    app_factory: Callable[..., AppServer],
    dns_factory: Callable[..., DNSServer],
    ca_file: Path,
) -> None:
    app = app_factory([HOST])  # listens on IPv4 only
    dns = dns_factory({HOST: ["127.0.0.1", "::1"]})
    code, out = _run(["-m", str(_manifest(tmp_path, app.port)), *_common(tmp_path, dns, ca_file)])
    assert code == 1, out
    assert "Result: WARN" in out
    assert "IPv4 works" in out


def test_failure_exits_2_with_rules_in_the_named_format(
    tmp_path: Path,
    app_factory: Callable[..., AppServer],
    dns_factory: Callable[..., DNSServer],
    ca_file: Path,
) -> None:
    app = app_factory([HOST])
    dns = dns_factory({HOST: ["127.0.0.1"], "ingest.site.test": ["127.0.0.2"]})
    manifest = _manifest(tmp_path, app.port, ingest="ingest.site.test")
    args = ["-m", str(manifest), *_common(tmp_path, dns, ca_file)]

    code, out = _run([*args, "--firewall-format", "fortigate"])
    assert code == 2, out
    assert "refused" in out
    assert "Allow rules for the blocked endpoints (fortigate)" in out
    assert 'set fqdn "ingest.site.test"' in out

    code, out = _run([*args, "--json", "-f", "fqdn-exact"])
    assert code == 2
    data = json.loads(out)
    [file] = data["firewall_fix"]["files"]
    assert "ingest.site.test" in file["content"]
    assert HOST not in file["content"].split("\n# ")[-1]


def test_unusable_options_exit_3(tmp_path: Path, ca_file: Path) -> None:
    manifest = _manifest(tmp_path, 443)
    code, _ = _run(["-m", str(manifest), "-f", "hand-written"])
    assert code == 3
    code, _ = _run(["-m", str(manifest), "--resolver", "dns.example"])
    assert code == 3
    code, _ = _run(["-m", str(manifest), "--ca", str(tmp_path / "missing.pem")])
    assert code == 3
    code, _ = _run(["-m", str(tmp_path / "missing.toml")])
    assert code == 3
