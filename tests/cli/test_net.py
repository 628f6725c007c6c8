"""``tether net docs | rules | diff | formats`` through the real command line."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.support.netreq import own_split
from tests.support.testbed.certs import TestCA
from typer.testing import CliRunner

from tether.cli import app
from tether.netreq.catalog import reference_text
from tether.netreq.loader import manifest_to_json
from tether.netreq.serve import MANIFEST_PATH, manifest_body

runner = CliRunner()


def _run(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["net", *args], env=env)


def test_docs_default_is_tethers_own_manifest_in_markdown() -> None:
    result = _run("docs")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# Network requirements: tether gateway")
    assert "| tether.example.com | TCP 443 | WebSocket (TLS 1.3+) |" in result.stdout


def test_docs_hostname_from_option_and_environment() -> None:
    by_option = _run("docs", "--hostname", "cloud.example.org", "--format", "csv")
    assert by_option.exit_code == 0
    assert by_option.stdout.splitlines()[1].split(",")[2] == "cloud.example.org"
    by_env = _run("docs", "-f", "json", env={"TETHER_HOSTNAME": "env.example.org"})
    assert by_env.exit_code == 0
    assert {e["host"] for e in json.loads(by_env.stdout)["endpoints"]} == {"env.example.org"}


def test_docs_html_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "requirements.html"
    result = _run("docs", "-f", "html", "-m", "mapped-gateway", "-o", str(out))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "cloudlink.mgmt.edge.mapped.com" in out.read_text()


def test_rules_print_the_format_and_gaps_on_stderr() -> None:
    result = _run("rules", "--format", "cisco-asa", "--manifest", "mapped-gateway")
    assert result.exit_code == 0
    assert " fqdn v4 cloudlink.mgmt.edge.mapped.com" in result.stdout
    assert "note: *.balena-cloud.com (legacy-balena)" in result.stderr
    assert "note:" not in result.stdout


def test_rules_options(tmp_path: Path) -> None:
    result = _run(
        "rules",
        "-f",
        "nftables",
        "-m",
        "mapped-gateway",
        "--no-legacy",
        "--prefix",
        "site",
        "--output-dir",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site-dnsmasq.conf", "site.nft"]
    conf = (tmp_path / "site-dnsmasq.conf").read_text()
    assert "datadog" not in conf
    assert "#inet#site#tcp443_v4" in conf


def test_rules_create_the_output_directory_or_say_why_not(tmp_path: Path) -> None:
    target = tmp_path / "firewall" / "tether"
    result = _run("rules", "-f", "nftables", "-m", "mapped-gateway", "-o", str(target))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in target.iterdir()) == ["mapped-dnsmasq.conf", "mapped.nft"]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    refused = _run("rules", "-f", "nftables", "-m", "mapped-gateway", "-o", str(blocker / "x"))
    assert refused.exit_code == 1
    assert f"{blocker / 'x'}: cannot create it" in refused.stderr
    assert "Traceback" not in refused.output


def test_rules_from_a_manifest_file(tmp_path: Path) -> None:
    path = tmp_path / "dt.toml"
    path.write_bytes(reference_text("dt-cloud-connector-2nd-gen"))
    result = _run("rules", "-f", "fqdn", "-m", str(path), "--required-only")
    assert result.exit_code == 0
    names = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    assert names == [
        "ccon-manager.prod.disruptive-technologies.com",
        "est.prod.disruptive-technologies.com",
        "mender.prod.disruptive-technologies.com",
        "mender-artifacts.prod.disruptive-technologies.com",
    ]


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'version = "2026010101"\npublisher = "p"\nproduct = "g"\n'
        '[[endpoints]]\nid = "api"\narea = "a"\npurpose = "p"\nhost = "api.example.com"\n'
        'ports = [{ port = "https" }]\n'
    )
    for code, args in (
        (1, ("rules", "-f", "fqdn", "-m", str(bad))),
        (1, ("docs", "-m", str(tmp_path / "missing.json"))),
        (2, ("rules", "-f", "iptables")),
        (2, ("docs", "-f", "pdf")),
        (2, ("diff", "mapped-gateway", "mapped-gateway", "-f", "pdf")),
        (1, ("docs", "--hostname", "Not A Host")),
    ):
        result = _run(*args)
        assert result.exit_code == code, args
        assert result.stderr.startswith("error: "), args
        assert result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.output
    result = _run("rules", "-f", "fqdn", "-m", str(bad))
    assert result.stderr == (
        f"error: {bad}: endpoint 'api': field 'ports[0].port': expected int, got str\n"
    )


def test_diff_between_files(tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    new = tmp_path / "new.json"
    old.write_bytes(manifest_to_json(own_split()))
    split = own_split()
    new.write_bytes(
        manifest_to_json(split).replace(b"ingest.tether.example.com", b"data.tether.example.com")
    )
    result = _run("diff", str(old), str(new))
    assert result.exit_code == 0
    assert "- data.tether.example.com TCP 443" in result.stdout
    as_json = _run("diff", str(old), str(new), "--json", "--exit-code")
    assert as_json.exit_code == 3
    assert json.loads(as_json.stdout)["action_required"] is True
    same = _run("diff", str(old), str(old), "--exit-code")
    assert same.exit_code == 0
    assert "Nothing a site needs to change." in same.stdout


class _Handler(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        if self.path != MANIFEST_PATH:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served() -> Iterator[str]:
    _Handler.body = manifest_body(own_split())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_manifest_from_the_served_url(served: str) -> None:
    result = _run("rules", "-f", "fqdn", "-m", served + MANIFEST_PATH)
    assert result.exit_code == 0, result.output
    assert "ingest.tether.example.com" in result.stdout
    missing = _run("docs", "-m", served + "/nope")
    assert missing.exit_code == 1
    assert "404" in missing.stderr


@pytest.fixture
def served_tls(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The manifest served over HTTPS by a server whose certificate a private CA signed: its
    URL and that CA's certificate file."""
    ca = TestCA()
    cert, key = ca.issue_server(["127.0.0.1"]).write(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    _Handler.body = manifest_body(own_split())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}{MANIFEST_PATH}"
        yield url, ca.write_cert(tmp_path / "ca.pem")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_manifest_served_under_a_private_ca_is_read_with_ca(
    served_tls: tuple[str, Path],
) -> None:
    url, ca = served_tls
    for args in (("docs", "-f", "csv", "-m", url), ("rules", "-f", "fqdn", "-m", url)):
        unverified = _run(*args)
        assert unverified.exit_code == 1, unverified.output
        assert "CERTIFICATE_VERIFY_FAILED" in unverified.stderr
        verified = _run(*args, "--ca", str(ca))
        assert verified.exit_code == 0, verified.output
        assert "ingest.tether.example.com" in verified.stdout
    diff = _run("diff", url, url, "--ca", str(ca), "--exit-code")
    assert diff.exit_code == 0, diff.output
    assert "Nothing a site needs to change." in diff.stdout


def test_net_alone_shows_its_commands() -> None:
    result = _run()
    assert "Missing command" not in result.output
    for command in ("docs", "rules", "diff", "formats", "check"):
        assert f" {command} " in result.stdout


@pytest.mark.parametrize(
    ("command", "sentence"),
    [
        ("rules", "a wildcard on a firewall that takes exact names only, a protocol its filter"),
        ("check", "an https:// URL is verified with that CA, and the CA must be the one the"),
        ("rules", "'==> NAME <==' line; --output-dir writes each to its own file, ready to load."),
    ],
)
def test_help_paragraphs_are_not_broken_where_the_source_wraps(command: str, sentence: str) -> None:
    result = runner.invoke(app, ["net", command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert any(sentence in line for line in result.stdout.splitlines()), result.stdout


def test_formats_lists_everything() -> None:
    result = _run("formats", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert {"kind": "rules", "name": "paloalto-edl"} in rows
    assert {"kind": "reference", "name": "mapped-gateway"} in rows
    assert "nftables" in _run("formats").stdout


def test_a_bare_reference_name_means_the_reference_even_beside_a_directory_of_that_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mapped-gateway").mkdir()
    result = _run("docs", "-f", "csv", "-m", "mapped-gateway")
    assert result.exit_code == 0, result.output
    assert "cloudlink.mgmt.edge.mapped.com" in result.stdout

    as_path = _run("docs", "-m", "./mapped-gateway")  # a path: the directory, said as such
    assert as_path.exit_code == 1
    assert "./mapped-gateway: a directory, not a manifest file" in as_path.stderr


def test_an_unknown_bare_name_lists_the_references(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = _run("rules", "-f", "fqdn", "-m", "maped-gateway")
    assert result.exit_code == 1
    assert "unknown format" not in result.stderr
    assert "'maped-gateway' is not a shipped reference manifest" in result.stderr
    assert "mapped-gateway, " in result.stderr or ", mapped-gateway" in result.stderr
    # a file that exists is read as one (and its real problem said), whatever its name
    (tmp_path / "site-manifest").write_text("x")
    named = _run("docs", "-m", "site-manifest")
    assert named.exit_code == 1
    assert "unknown format: use a .toml or .json file" in named.stderr
    # a file named like a reference is reached by its path
    (tmp_path / "mapped-gateway.toml").write_text(reference_text("mapped-gateway").decode())
    by_path = _run("docs", "-f", "csv", "-m", "./mapped-gateway.toml")
    assert by_path.exit_code == 0, by_path.output


def test_manifest_help_says_how_a_name_is_read() -> None:
    result = runner.invoke(app, ["net", "check", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "a bare reference name always means the reference" in text
    assert "write ./NAME for a file named like a reference" in text
