"""``tether net check`` end to end through the command line, against the test bed."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.support.testbed.appserver import AppServer, server_context
from tests.support.testbed.certs import TestCA
from tests.support.testbed.dnsserver import DNSServer
from typer.testing import CliRunner

from tether.cli import app as cli
from tether.netcheck.report import Status, decode_report
from tether.netcheck.runner import CheckOptions, run_checks
from tether.netcheck.tls import TrustAnchors, spki_sha256
from tether.netreq.loader import manifest_to_json
from tether.netreq.own import DeploymentSettings, build_own_manifest
from tether.netreq.serve import MANIFEST_PATH

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
        "--long-poll-hold",
        "1",
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
    assert {e for r in report.results for e in r.about()} >= {"control", "ingest"}


def test_piped_table_has_one_row_per_shared_probe_each_on_one_line(
    tmp_path: Path,
    app_factory: Callable[..., AppServer],
    dns_factory: Callable[..., DNSServer],
    ca_file: Path,
) -> None:
    app = app_factory([HOST])
    dns = dns_factory({HOST: ["127.0.0.1"]})
    manifest = _manifest(tmp_path, app.port)
    result = CliRunner().invoke(  # stdout is not a terminal here, as in `| tee report.txt`
        cli, ["net", "check", "-m", str(manifest), *_common(tmp_path, dns, ca_file)]
    )
    assert result.exit_code == 0, result.stdout
    lines = result.stdout.splitlines()
    all_six = "[control, enrollment, ingest, updates, logs, support]"
    [dns_row] = [line for line in lines if " dns " in line]
    assert all_six in dns_row
    assert f"{HOST} @ 127.0.0.1:{dns.port}" in dns_row
    [tls_row] = [line for line in lines if " tls " in line]
    assert all_six in tls_row
    assert f"{HOST}:{app.port}" in tls_row  # the target whole, never cut mid-port
    [ws_row] = [line for line in lines if " websocket " in line]
    assert "[control]" in ws_row


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


def test_long_poll_hold_defaults_to_the_agents_and_can_be_shortened(tmp_path: Path) -> None:
    from tether.gateway.settings import AgentSettings
    from tether.netcheck.command import CheckCommand, UsageError, _options

    agent = AgentSettings(data_dir=tmp_path)
    assert _options(CheckCommand()).long_poll_wait == agent.longpoll_wait == 25.0
    assert _options(CheckCommand(long_poll_hold=3.0)).long_poll_wait == 3.0
    with pytest.raises(UsageError, match="--long-poll-hold"):
        _options(CheckCommand(long_poll_hold=0))


@pytest.fixture
def manifest_url(tmp_path: Path, test_ca: TestCA) -> Iterator[str]:
    """An HTTPS server (certificate from the test CA) serving a manifest, as the cloud does."""
    body = manifest_to_json(build_own_manifest(DeploymentSettings(hostname=HOST)))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = server_context(test_ca, ["127.0.0.1"], tmp_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}{MANIFEST_PATH}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_manifest_url_is_verified_with_the_ca_given(
    tmp_path: Path, manifest_url: str, ca_file: Path
) -> None:
    from tether.cli.net import _Failed, _read

    manifest = _read(manifest_url, "unused", ca_file)
    assert manifest.endpoint("control").host == HOST
    with pytest.raises(_Failed, match="CERTIFICATE_VERIFY_FAILED"):
        _read(manifest_url, "unused")  # the system trust store does not know the test CA


async def test_a_ca_the_manifest_does_not_pin_is_a_failure(tmp_path: Path) -> None:
    other = TestCA("Some other CA")
    pinned = TestCA("Deployment CA")
    manifest = build_own_manifest(
        DeploymentSettings(hostname=HOST, ca_spki_sha256=spki_sha256(pinned.cert))
    )
    base = CheckOptions(
        resolvers=(),
        environ={},
        lease_root=tmp_path,
        endpoint_ids=("control",),
        timeout=0.5,
    )
    wrong = await run_checks(
        manifest, dataclasses.replace(base, anchors=TrustAnchors((other.cert,)))
    )
    [row] = [r for r in wrong.results if r.target == "--ca"]
    assert row.status is Status.FAIL
    assert "Some other CA" in row.finding
    assert spki_sha256(pinned.cert)[:16] in row.finding

    right = await run_checks(
        manifest, dataclasses.replace(base, anchors=TrustAnchors((pinned.cert,)))
    )
    assert [r for r in right.results if r.target == "--ca"] == []
