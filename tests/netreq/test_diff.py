"""What a site must change between two manifest versions."""

from __future__ import annotations

import datetime as dt
import json

import msgspec
import pytest
from tests.support.netreq import endpoint, tricky_manifest

from tether.netreq.diff import diff_manifests, render_diff
from tether.netreq.model import Change, ChangeKind, DnsPolicy, Port, Requirement, Transport


def _new():  # type: ignore[no-untyped-def]
    old = tricky_manifest()
    eps = [e for e in old.endpoints if e.id != "old"]
    eps = [
        msgspec.structs.replace(e, ports=(*e.ports, Port(port=8443))) if e.id == "exact" else e
        for e in eps
    ]
    eps.append(endpoint("ingest", "ingest.example.com"))
    change = Change(
        version="2026020101",
        effective=dt.date(2026, 3, 1),
        kind=ChangeKind.ADDED,
        endpoint="ingest",
        summary="Telemetry moves to its own name.",
        impact="Allow ingest.example.com on TCP 443.",
    )
    return msgspec.structs.replace(
        old,
        version="2026020101",
        endpoints=tuple(eps),
        dns=DnsPolicy(fallback_resolvers=("192.0.2.53",)),
        changes=(change,),
    )


def test_diff_lists_what_to_allow_and_what_may_go() -> None:
    d = diff_manifests(tricky_manifest(), _new())
    assert [str(r) for r in d.allow] == [
        "api.example.com TCP 8443",
        "ingest.example.com TCP 443",
    ]
    assert [str(r) for r in d.revoke] == ["old.example.com TCP 443"]
    assert [e.id for e in d.added] == ["ingest"]
    assert [e.id for e in d.removed] == ["old"]
    assert [(c.id, [f.field for f in c.fields]) for c in d.changed] == [("exact", ["ports"])]
    assert [f.field for f in d.policy] == ["dns.fallback_resolvers"]
    assert [c.endpoint for c in d.changelog] == ["ingest"]
    assert d.action_required


def test_identical_manifests() -> None:
    d = diff_manifests(tricky_manifest(), tricky_manifest())
    assert d.empty
    assert not d.action_required
    assert "Nothing a site needs to change." in render_diff(d)


def test_renderings() -> None:
    d = diff_manifests(tricky_manifest(), _new())
    text = render_diff(d, "text")
    assert text.startswith("Network requirements: 2026010101 → 2026020101")
    assert "Action required" in text
    assert "- ingest.example.com TCP 443" in text
    assert "- exact (api.example.com)" in text
    md = render_diff(d, "md")
    assert "## Allow" in md
    body = json.loads(render_diff(d, "json"))
    assert body["action_required"] is True
    assert body["allow"][0] == {"pattern": "api.example.com", "transport": "tcp", "port": 8443}
    with pytest.raises(ValueError, match="unknown diff format"):
        render_diff(d, "xml")


def test_removing_only_needs_no_action() -> None:
    old = tricky_manifest()
    new = msgspec.structs.replace(old, endpoints=old.endpoints[:-1])
    d = diff_manifests(old, new)
    assert not d.action_required
    assert [str(r) for r in d.revoke] == ["*.legacy.example.com TCP 443"]
    assert Transport.TCP is d.revoke[0].transport


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"proxy_ok": False}, "no longer works through an HTTP proxy: allow it directly"),
        ({"requirement": Requirement.REQUIRED}, "is now required"),
    ],
)
def test_changes_a_site_must_act_on_without_a_new_name(
    change: dict[str, object], expected: str
) -> None:
    old = tricky_manifest()
    before = {
        "exact": msgspec.structs.replace(
            old.endpoint("exact"), proxy_ok=True, requirement=Requirement.OPTIONAL
        )
    }
    old = msgspec.structs.replace(old, endpoints=tuple(before.get(e.id, e) for e in old.endpoints))
    new = msgspec.structs.replace(
        old,
        version="2026020101",
        endpoints=tuple(
            msgspec.structs.replace(e, **change) if e.id == "exact" else e for e in old.endpoints
        ),
    )
    d = diff_manifests(old, new)
    assert d.allow == ()
    assert d.action_required
    assert any(expected in a and "api.example.com" in a for a in d.actions)
    text = render_diff(d)
    assert "No new rule is needed" not in text
    assert expected in text
    assert json.loads(render_diff(d, "json"))["action_required"] is True
