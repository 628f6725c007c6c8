"""Loading manifests from TOML and JSON: round trips, and errors naming file, entry and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.netreq import all_manifests

from tether.netreq.loader import (
    ManifestError,
    load_manifest,
    manifest_to_json,
    parse_changes,
    parse_manifest,
)

HEAD = 'version = "2026010101"\npublisher = "p"\nproduct = "g"\n'
CHANGE = """
[[changes]]
version = "2026010101"
effective = 2026-01-01
kind = "added"
endpoint = "api"
summary = "s"
"""
GOOD = """
[[endpoints]]
id = "api"
area = "control"
purpose = "p"
host = "api.example.com"
tls = { min_version = "1.3" }
"""


def _error(text: str, fmt: str = "toml") -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, source="site.toml", fmt=fmt)  # type: ignore[arg-type]
    return info.value


def test_a_good_manifest_loads() -> None:
    m = parse_manifest(HEAD + GOOD, source="site.toml", fmt="toml")
    assert m.endpoints[0].host == "api.example.com"
    assert m.endpoints[0].ports[0].port == 443


@pytest.mark.parametrize(
    ("change", "field", "detail"),
    [
        ('ports = [{ port = "443" }]', "ports[0].port", "expected int, got str"),
        ('match = "wildcard"', "match", "is not one of: exact, apex-and-subdomains, subdomains"),
        ('protocol = "ftp"', "protocol", "is not one of: https, wss"),
        ("colour = 1", "colour", "unknown field"),
        ("tls = { min_version = 1.3 }", "tls.min_version", "expected str, got float"),
        ('probe = { kind = "ping" }', "probe.kind", "is not one of: none, dns"),
        (
            'host = "*.example.com"',
            "host",
            "not a lowercase DNS name (express wildcards with 'match')",
        ),
        ('sunset = "tomorrow"', "sunset", "invalid"),
        ("proxy_ok = 1", "proxy_ok", "expected bool, got int"),
    ],
)
def test_errors_name_file_entry_and_field(change: str, field: str, detail: str) -> None:
    key = change.split(" =", maxsplit=1)[0]
    body = "\n".join(line for line in GOOD.splitlines() if not line.startswith(key + " ="))
    err = _error(HEAD + body + "\n" + change + "\n")
    assert err.source == "site.toml"
    assert err.entry == "endpoint 'api'"
    assert err.field == field
    assert str(err).startswith(f"site.toml: endpoint 'api': field '{field}': ")
    assert detail in str(err)


def test_missing_field_and_unnamed_endpoint() -> None:
    err = _error(HEAD + '[[endpoints]]\narea = "a"\npurpose = "p"\nhost = "a.example.com"\n')
    assert str(err) == "site.toml: endpoint #1: field 'id': missing (required)"


def test_semantic_problems_report_the_first_and_count_the_rest() -> None:
    text = HEAD + GOOD.replace('tls = { min_version = "1.3" }', 'tls = { min_version = "1.0" }')
    text += "sunset = 2030-01-01\n"
    err = _error(text)
    assert err.field == "tls.min_version"
    assert len(err.problems) == 2
    assert str(err).endswith("(and 1 more problem)")


def test_section_errors() -> None:
    assert str(_error(HEAD + GOOD + "[dns]\nfallback_resolvers = 1\n")) == (
        "site.toml: dns: field 'fallback_resolvers': expected array, got int"
    )
    text = HEAD + GOOD + CHANGE.replace('"added"', '"renamed"')
    err = _error(text)
    assert err.entry == "change 1"
    assert err.field == "kind"
    assert str(_error('version = "2026010101"\n')).endswith("manifest: field 'endpoints': missing")
    assert "field 'version'" in str(_error(HEAD.replace("2026010101", "2026133101") + GOOD))


def test_syntax_errors_name_the_position() -> None:
    assert "invalid TOML" in str(_error("version = \n"))
    err = _error('{"version": "2026010101",\n "endpoints": [}', fmt="json")
    assert str(err).startswith("site.toml: invalid JSON at line 2, column")
    assert "must be a table/object" in str(_error("[1, 2]", fmt="json"))


@pytest.mark.parametrize("name", sorted(all_manifests()))
def test_json_round_trip(name: str) -> None:
    m = all_manifests()[name]
    again = parse_manifest(manifest_to_json(m), source="x.json", fmt="json")
    assert again == m
    assert manifest_to_json(again) == manifest_to_json(m)


def test_load_manifest_by_suffix(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(HEAD + GOOD)
    assert load_manifest(path).endpoints[0].id == "api"
    json_path = tmp_path / "site.json"
    json_path.write_bytes(manifest_to_json(load_manifest(path)))
    assert load_manifest(json_path) == load_manifest(path)
    with pytest.raises(ManifestError, match=r"use a \.toml or \.json file"):
        load_manifest(tmp_path / "site.yaml")
    with pytest.raises(ManifestError, match=r"missing\.toml: No such file"):
        load_manifest(tmp_path / "missing.toml")


def test_change_documents() -> None:
    text = CHANGE.replace('"api"', '"x"')
    assert parse_changes(text, source="c.toml", fmt="toml")[0].endpoint == "x"
    with pytest.raises(ManifestError, match="change 1: field 'version'"):
        parse_changes(text.replace("2026010101", "26"), source="c.toml", fmt="toml")
    with pytest.raises(ManifestError, match="one non-empty list"):
        parse_changes("extra = 1\n" + text, source="c.toml", fmt="toml")


@pytest.mark.parametrize(
    ("head", "body", "entry", "field", "shown"),
    [
        (
            'version = "2026010101"\npublisher = "p"\nproduct = "Acme\\nflush ruleset\\n#"\n',
            GOOD,
            "manifest",
            "product",
            "U+000A",
        ),
        (
            HEAD,
            GOOD.replace('purpose = "p"', 'purpose = "a\\rb"'),
            "endpoint 'api'",
            "purpose",
            "U+000D",
        ),
        (
            HEAD,
            GOOD.replace('area = "control"', 'area = "ar\\"ea"'),
            "endpoint 'api'",
            "area",
            "U+0022",
        ),
        (HEAD, GOOD + 'probe = { note = "x\\u2028y" }\n', "endpoint 'api'", "probe.note", "U+2028"),
        (HEAD, GOOD + 'notes = "evil \\u202e txt"\n', "endpoint 'api'", "notes", "U+202E"),
        (
            HEAD + 'notes = ["ok", "a\\u0000b"]\n',
            GOOD,
            "manifest",
            "notes[1]",
            "U+0000",
        ),
        (
            HEAD,
            GOOD + CHANGE.replace('summary = "s"', 'summary = "s\\n"'),
            "change 1",
            "summary",
            "U+000A",
        ),
    ],
)
def test_control_and_markup_characters_are_refused(
    head: str, body: str, entry: str, field: str, shown: str
) -> None:
    error = _error(head + body)
    assert (error.entry, error.field) == (entry, field)
    assert shown in str(error)


def test_ordinary_punctuation_in_free_text_is_kept() -> None:
    text = HEAD.replace('product = "g"', 'product = "O\'Brien & Sons gateway (v2)"') + GOOD
    text = text.replace('purpose = "p"', 'purpose = "<b>a</b> \\"b\\" | c"')
    manifest = parse_manifest(text, source="s", fmt="toml")
    assert manifest.product == "O'Brien & Sons gateway (v2)"
