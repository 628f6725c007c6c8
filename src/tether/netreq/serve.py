"""Response bodies for the cloud's unauthenticated network-requirements endpoints (no I/O).

The cloud serves its own manifest so sites can fetch it and watch it for changes::

    GET /.well-known/tether/network-requirements                 -> manifest_body(m)
    GET /.well-known/tether/network-requirements/version         -> version_body(m)
    GET /.well-known/tether/network-requirements/changes?since=V -> changes_body(m, since)

All bodies are JSON (:data:`CONTENT_TYPE`). :func:`etag` gives a strong validator for
``ETag``/``If-None-Match``. :func:`changes_body` raises :class:`InvalidVersion` for a malformed
``since`` (answer 400 with the message).
"""

from __future__ import annotations

import hashlib

import msgspec

from tether.netreq.loader import manifest_to_json
from tether.netreq.model import Manifest, is_valid_version

__all__ = [
    "CHANGES_PATH",
    "CONTENT_TYPE",
    "MANIFEST_PATH",
    "VERSION_PATH",
    "InvalidVersion",
    "changes_body",
    "digest",
    "etag",
    "manifest_body",
    "version_body",
]

MANIFEST_PATH = "/.well-known/tether/network-requirements"
VERSION_PATH = MANIFEST_PATH + "/version"
CHANGES_PATH = MANIFEST_PATH + "/changes"
CONTENT_TYPE = "application/json"


class InvalidVersion(ValueError):
    """A ``since`` query value that is not a manifest version (YYYYMMDDNN)."""


def manifest_body(m: Manifest) -> bytes:
    """The whole manifest as JSON."""
    return manifest_to_json(m)


def digest(m: Manifest) -> str:
    """SHA-256 of the manifest's JSON: changes whenever any content changes."""
    return hashlib.sha256(manifest_to_json(m)).hexdigest()


def etag(m: Manifest) -> str:
    """A strong ETag (quoted) for any of the three bodies of this manifest."""
    return f'"{m.version}-{digest(m)[:16]}"'


def version_body(m: Manifest) -> bytes:
    """Small document for watchers: version, content digest and the latest change."""
    latest = m.changes_since(None)[:1]
    body = {
        "version": m.version,
        "sha256": digest(m),
        "publisher": m.publisher,
        "product": m.product,
        "endpoints": len(m.endpoints),
        "latest_change": msgspec.to_builtins(latest[0]) if latest else None,
        "manifest": MANIFEST_PATH,
        "changes": CHANGES_PATH,
    }
    return msgspec.json.format(msgspec.json.encode(body), indent=2) + b"\n"


def changes_body(m: Manifest, since: str | None) -> bytes:
    """Change-log entries newer than ``since`` (all when ``None``), newest first."""
    if since is not None and not is_valid_version(since):
        raise InvalidVersion(f"since: {since!r} is not a manifest version (YYYYMMDDNN)")
    body = {
        "version": m.version,
        "since": since,
        "up_to_date": since is not None and since >= m.version,
        "changes": msgspec.to_builtins(m.changes_since(since)),
    }
    return msgspec.json.format(msgspec.json.encode(body), indent=2) + b"\n"
