"""``tether net …``: network-requirements documents, firewall rules and the preflight check.

``docs``, ``rules`` and ``diff`` read tether's own manifest (generated from ``--hostname`` /
``TETHER_HOSTNAME``) unless ``--manifest`` names another one: an ``https://`` URL of a served
manifest (verified with ``--ca`` when a private CA signed its server), a shipped reference
(``tether net formats`` lists them; a bare reference name always means the reference, even
beside a file or directory of that name), or a TOML or JSON file.
"""

from __future__ import annotations

import os
import ssl
import sys
from pathlib import Path

import httpx
import typer

from tether.cli.output import console, fail, print_json, table
from tether.netreq.catalog import REFERENCE_MANIFESTS, load_reference
from tether.netreq.diff import DIFF_FORMATS
from tether.netreq.loader import ManifestError, load_manifest, parse_manifest
from tether.netreq.model import Manifest
from tether.netreq.own import DEFAULT_HOSTNAME, DeploymentSettings, SettingsError
from tether.netreq.own import build_own_manifest as _build_own
from tether.netreq.render import (
    DOCUMENT_FORMATS,
    RULE_FORMATS,
    RuleOptions,
    UnknownFormat,
    build_rules,
    diff_manifests,
    render_diff,
    render_document,
)

app = typer.Typer(
    help="Network requirements: documents, firewall rules, preflight check.", no_args_is_help=True
)

_FETCH_TIMEOUT = 15.0

_MANIFEST_HELP = (
    "Manifest to read: an https:// URL; a shipped reference name (tether net formats lists "
    "them; a bare reference name always means the reference, even beside a file or directory "
    "of that name); else a .toml or .json file (write ./NAME for a file named like a "
    "reference). Default: tether's own manifest for --hostname."
)
_HOSTNAME_HELP = "The cloud's hostname, for tether's own manifest."
_CA_HELP = (
    "CA certificate (PEM) that verifies an https:// manifest URL, e.g. a tether cloud's platform "
    "CA (its data_dir/pki/ca.pem). Default: the system's CAs."
)
# Typer keeps a docstring's line breaks: help with more than one paragraph is given whole, one
# line per paragraph.
_RULES_HELP = (
    "Firewall configuration generated from the manifest, in one vendor's format.\n\n"
    "Whatever the format cannot express exactly (a wildcard on a firewall that takes exact names "
    "only, a protocol its filter cannot see) is listed on stderr.\n\n"
    "A format of several files (nftables: a ruleset and dnsmasq lines) prints each after a "
    "'==> NAME <==' line; --output-dir writes each to its own file, ready to load."
)
_CHECK_HELP = (
    "Preflight from this network: can a gateway here reach everything the manifest lists?\n\n"
    "With --ca, a manifest fetched from an https:// URL is verified with that CA, and the CA must "
    "be the one the manifest pins (when it publishes the digest): a mismatch is a failure.\n\n"
    "Exit code 0 pass, 1 warnings, 2 failures, 3 the check could not run."
)
_MANIFEST_SUFFIXES = (".toml", ".json")


#: A usage error (an unknown format, …) exits with this status, as everywhere in ``tether``.
EXIT_USAGE = 2


class _Failed(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def _fetch(url: str, ca: Path | None = None) -> Manifest:
    """The manifest served at ``url``, its TLS verified by ``ca`` when given (else the system)."""
    verify: ssl.SSLContext | bool = True
    if ca is not None:
        try:
            verify = ssl.create_default_context(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise _Failed(f"--ca {ca}: not a readable PEM certificate file ({exc})") from exc
    try:
        response = httpx.get(url, timeout=_FETCH_TIMEOUT, follow_redirects=True, verify=verify)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise _Failed(f"{url}: {exc}") from exc
    return parse_manifest(response.content, source=url, fmt="json")


def _read(ref: str | None, hostname: str, ca: Path | None = None) -> Manifest:
    """A manifest from a file, a URL, a reference name, or tether's own (``ref`` is None)."""
    try:
        if ref is None:
            return _build_own(DeploymentSettings(hostname=hostname.lower()))
        if ref.startswith(("https://", "http://")):
            return _fetch(ref, ca)
        if ref in REFERENCE_MANIFESTS:
            return load_reference(ref)
        return load_manifest(_manifest_file(ref))
    except (ManifestError, SettingsError) as exc:
        raise _Failed(str(exc)) from exc


def _manifest_file(ref: str) -> Path:
    """``ref`` as a manifest file, or a failure that says what ``ref`` was taken for.

    A name with a path separator or a manifest suffix, or one that names an existing file, is a
    file; any other bare name was meant as a reference manifest, and none is called that.
    """
    path = Path(ref)
    bare = "/" not in ref and os.sep not in ref
    if bare and path.suffix.lower() not in _MANIFEST_SUFFIXES and not path.is_file():
        raise _Failed(
            f"{ref!r} is not a shipped reference manifest (those are: "
            f"{', '.join(REFERENCE_MANIFESTS)}) nor a manifest file: a file must end in "
            ".toml or .json"
        )
    if path.is_dir():
        raise _Failed(f"{ref}: a directory, not a manifest file (.toml or .json)")
    return path


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise _Failed(f"{path}: {exc.strerror or exc}") from exc


@app.command("docs")
def docs(
    fmt: str = typer.Option("md", "--format", "-f", help="md, html, csv or json."),
    manifest: str | None = typer.Option(None, "--manifest", "-m", help=_MANIFEST_HELP),
    hostname: str = typer.Option(
        DEFAULT_HOSTNAME, "--hostname", envvar="TETHER_HOSTNAME", help=_HOSTNAME_HELP
    ),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to this file."),
    ca: Path | None = typer.Option(None, "--ca", help=_CA_HELP),
) -> None:
    """The network-requirements document for site IT: Markdown, standalone HTML, CSV or JSON."""
    try:
        text = render_document(_read(manifest, hostname, ca), fmt)
        if output is None:
            sys.stdout.write(text)
        else:
            _write(output, text)
    except UnknownFormat as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except _Failed as exc:
        raise fail(str(exc)) from None


@app.command("rules", help=_RULES_HELP)
def rules(
    fmt: str = typer.Option(..., "--format", "-f", help=f"One of: {', '.join(RULE_FORMATS)}."),
    manifest: str | None = typer.Option(None, "--manifest", "-m", help=_MANIFEST_HELP),
    hostname: str = typer.Option(
        DEFAULT_HOSTNAME, "--hostname", envvar="TETHER_HOSTNAME", help=_HOSTNAME_HELP
    ),
    legacy: bool = typer.Option(True, "--legacy/--no-legacy", help="Include legacy endpoints."),
    optional: bool = typer.Option(
        True, "--optional/--required-only", help="Include optional endpoints."
    ),
    prefix: str | None = typer.Option(None, "--prefix", help="Prefix of object names."),
    output_dir: Path | None = typer.Option(
        None, "--output-dir", "-o", help="Write each file of the format into this directory."
    ),
    ca: Path | None = typer.Option(None, "--ca", help=_CA_HELP),
) -> None:
    try:
        out = build_rules(
            _read(manifest, hostname, ca),
            fmt,
            RuleOptions(include_legacy=legacy, include_optional=optional, prefix=prefix),
        )
        if output_dir is None:
            sys.stdout.write(out.text)
        else:
            try:
                output_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _Failed(f"{output_dir}: cannot create it: {exc.strerror or exc}") from exc
            for name, content in out.files:
                _write(output_dir / name, content)
                typer.echo(f"wrote {output_dir / name}", err=True)
    except UnknownFormat as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except _Failed as exc:
        raise fail(str(exc)) from None
    for gap in out.gaps:
        typer.echo(f"note: {gap}", err=True)


@app.command("diff")
def diff(
    old: str = typer.Argument(
        ..., help="The manifest the site has configured (as --manifest of the other commands)."
    ),
    new: str = typer.Argument(..., help="The new manifest (as --manifest)."),
    fmt: str = typer.Option("text", "--format", "-f", help=f"One of: {', '.join(DIFF_FORMATS)}."),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
    exit_code: bool = typer.Option(
        False, "--exit-code", help="Exit with status 3 when the site must allow something new."
    ),
    ca: Path | None = typer.Option(None, "--ca", help=_CA_HELP),
) -> None:
    """What changed between two manifests, and what a site must change in its firewall."""
    if not as_json and fmt not in DIFF_FORMATS:
        raise fail(f"unknown diff format {fmt!r} (one of {', '.join(DIFF_FORMATS)})", EXIT_USAGE)
    try:
        d = diff_manifests(_read(old, DEFAULT_HOSTNAME, ca), _read(new, DEFAULT_HOSTNAME, ca))
        sys.stdout.write(render_diff(d, "json" if as_json else fmt))
    except (_Failed, ValueError) as exc:
        raise fail(str(exc)) from None
    if exit_code and d.action_required:
        raise typer.Exit(3)


@app.command("formats")
def formats(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Document formats, firewall formats and the shipped reference manifests."""
    rows = (
        [("document", f) for f in DOCUMENT_FORMATS]
        + [("rules", f) for f in RULE_FORMATS]
        + [("reference", n) for n in REFERENCE_MANIFESTS]
    )
    if as_json:
        print_json([{"kind": k, "name": n} for k, n in rows])
        return
    table("Network-requirements formats", ["kind", "name"], rows)
    console.print(
        "Use: tether net docs -f FORMAT | tether net rules -f FORMAT [-m MANIFEST]", soft_wrap=True
    )


@app.command("check", help=_CHECK_HELP)
def check(
    manifest: str | None = typer.Option(None, "--manifest", "-m", help=_MANIFEST_HELP),
    hostname: str = typer.Option(
        DEFAULT_HOSTNAME, "--hostname", envvar="TETHER_HOSTNAME", help=_HOSTNAME_HELP
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    firewall_format: str | None = typer.Option(
        None, "--firewall-format", "-f", help="Render allow rules for blocked endpoints."
    ),
    resolver: list[str] = typer.Option(
        [], "--resolver", help="IP[:PORT] of a resolver to use (repeatable); default: discover."
    ),
    ca: Path | None = typer.Option(None, "--ca", help="Pinned CA certificate (PEM) for TLS."),
    timeout: float = typer.Option(5.0, "--timeout", help="Seconds per probe."),
    idle_survival: float = typer.Option(
        0.0, "--idle-survival", help="Hold a link idle this many seconds and check it survives."
    ),
    lease_root: Path = typer.Option(
        Path("/"), "--lease-root", help="Read DHCP leases under this directory."
    ),
    legacy: bool = typer.Option(False, "--legacy", help="Also probe legacy endpoints."),
    long_poll_hold: float | None = typer.Option(
        None,
        "--long-poll-hold",
        help="Seconds the long-poll probe is held (default 25: as long as the agent holds).",
    ),
) -> None:
    from tether.netcheck.command import EXIT_UNUSABLE, CheckCommand, UsageError, run_command

    command = CheckCommand(
        as_json=as_json,
        firewall_format=firewall_format,
        resolvers=resolver,
        ca=ca,
        timeout=timeout,
        idle_survival=idle_survival,
        lease_root=lease_root,
        include_legacy=legacy,
        long_poll_hold=long_poll_hold,
    )
    try:
        code = run_command(_read(manifest, hostname, ca), command)
    except (_Failed, UsageError) as exc:
        raise fail(str(exc), EXIT_UNUSABLE) from None
    raise typer.Exit(code)
