"""Bodies of the cloud's unauthenticated network-requirements endpoints."""

from __future__ import annotations

import datetime as dt
import json

import msgspec
import pytest
from tests.support.netreq import own_single, own_split

from tether.netreq.loader import parse_manifest
from tether.netreq.model import Change, ChangeKind
from tether.netreq.serve import (
    CHANGES_PATH,
    MANIFEST_PATH,
    VERSION_PATH,
    InvalidVersion,
    changes_body,
    etag,
    manifest_body,
    version_body,
)


def _with_changes():  # type: ignore[no-untyped-def]
    m = own_single()
    extra = (
        Change(
            version="2099010101",
            effective=dt.date(2099, 1, 1),
            kind=ChangeKind.ADDED,
            endpoint="ingest",
            summary="new",
        ),
    )
    return msgspec.structs.replace(m, version="2099010101", changes=m.changes + extra)


def test_paths() -> None:
    assert MANIFEST_PATH == "/.well-known/tether/network-requirements"
    assert VERSION_PATH == MANIFEST_PATH + "/version"
    assert CHANGES_PATH == MANIFEST_PATH + "/changes"


def test_manifest_body_parses_back() -> None:
    m = own_split()
    assert parse_manifest(manifest_body(m), source="served", fmt="json") == m


def test_version_body() -> None:
    m = _with_changes()
    body = json.loads(version_body(m))
    assert body["version"] == "2099010101"
    assert body["latest_change"]["summary"] == "new"
    assert len(body["sha256"]) == 64
    assert body["endpoints"] == len(m.endpoints)


def test_changes_since() -> None:
    m = _with_changes()
    everything = json.loads(changes_body(m, None))
    assert next(c["version"] for c in everything["changes"]) == "2099010101"
    assert len(everything["changes"]) == len(m.changes)
    newer = json.loads(changes_body(m, "2098010101"))
    assert [c["summary"] for c in newer["changes"]] == ["new"]
    assert newer["up_to_date"] is False
    current = json.loads(changes_body(m, "2099010101"))
    assert current["changes"] == []
    assert current["up_to_date"] is True


def test_bad_since_is_refused() -> None:
    with pytest.raises(InvalidVersion, match="since"):
        changes_body(own_single(), "yesterday")


def test_etag_follows_content() -> None:
    assert etag(own_single()) == etag(own_single())
    assert etag(own_single()) != etag(own_split())
    assert etag(own_single()).startswith('"')
