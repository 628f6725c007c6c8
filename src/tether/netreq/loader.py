"""Manifest loading (TOML or JSON) and JSON encoding, with errors naming file, entry and field.

Parsing is pure (:func:`parse_manifest` takes bytes or text); :func:`load_manifest` only adds the
file read. Every failure is a :class:`ManifestError` whose message reads like::

    mapped.toml: endpoint 'cloudlink': field 'ports[0].port': expected int, got str

Structural errors (wrong type, unknown or missing field, bad enum value) come from converting each
entry on its own, so the message can name the endpoint by its id; semantic errors (bad host name,
missing TLS expectations, dangling references) come from :func:`tether.netreq.model.problems`.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from tether.netreq.model import (
    AppProtocol,
    Change,
    ChangeKind,
    CustomerData,
    Direction,
    DnsPolicy,
    Endpoint,
    Lifecycle,
    Manifest,
    MatchMode,
    PinKind,
    ProbeKind,
    Problem,
    Requirement,
    TimePolicy,
    Transport,
    is_valid_version,
    problems,
)

__all__ = [
    "ManifestError",
    "load_manifest",
    "manifest_to_json",
    "parse_changes",
    "parse_manifest",
]

Format = Literal["toml", "json"]
_T = TypeVar("_T")


class ManifestError(ValueError):
    """A manifest could not be read, parsed or validated.

    ``source`` is the file (or other origin), ``entry`` the endpoint or section (``None`` for the
    document as a whole), ``field`` the dotted field path inside it (``None`` when not about one
    field). ``problems`` holds every semantic problem found, the first of which is the message.
    """

    def __init__(
        self,
        source: str,
        entry: str | None,
        field: str | None,
        detail: str,
        problems: tuple[Problem, ...] = (),
    ) -> None:
        self.source = source
        self.entry = entry
        self.field = field
        self.detail = detail
        self.problems = problems
        parts = [source]
        if entry:
            parts.append(entry)
        if field:
            parts.append(f"field '{field}'")
        message = ": ".join([*parts, detail])
        if len(problems) > 1:
            message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
        super().__init__(message)


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest file; the format comes from the suffix (.toml or .json)."""
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ManifestError(str(path), None, None, "unknown format: use a .toml or .json file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(str(path), None, None, exc.strerror or str(exc)) from exc
    fmt: Format = "toml" if suffix == ".toml" else "json"
    return parse_manifest(data, source=str(path), fmt=fmt)


def parse_manifest(data: bytes | str, *, source: str, fmt: Format) -> Manifest:
    """Parse and validate a manifest given as TOML or JSON text."""
    top = _decode(data, source, fmt)
    return _convert(top, source)


def parse_changes(data: bytes | str, *, source: str, fmt: Format) -> tuple[Change, ...]:
    """A change-log document (a ``changes`` list and nothing else), validated entry by entry."""
    top = _decode(data, source, fmt)
    raw = top.get("changes")
    if not isinstance(raw, list) or not raw or set(top) != {"changes"}:
        raise ManifestError(source, None, "changes", "the document holds one non-empty list")
    out: list[Change] = []
    for i, entry in enumerate(raw):
        change = _check(entry, Change, source, f"change {i + 1}", {"kind": ChangeKind})
        if not is_valid_version(change.version):
            raise ManifestError(source, f"change {i + 1}", "version", "not YYYYMMDDNN")
        out.append(change)
    return tuple(out)


def manifest_to_json(m: Manifest) -> bytes:
    """The manifest as indented JSON (stable field order, dates as ISO strings), newline-ended."""
    return msgspec.json.format(msgspec.json.encode(m), indent=2) + b"\n"


def _decode(data: bytes | str, source: str, fmt: Format) -> dict[str, Any]:
    if fmt == "toml":
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            top: Any = tomllib.loads(text)
        except UnicodeDecodeError as exc:
            raise ManifestError(source, None, None, f"not UTF-8 text: {exc.reason}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ManifestError(source, None, None, f"invalid TOML: {exc}") from exc
    elif fmt == "json":
        try:
            top = json.loads(data)
        except UnicodeDecodeError as exc:
            raise ManifestError(source, None, None, f"not UTF-8 text: {exc.reason}") from exc
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            raise ManifestError(source, None, None, f"invalid JSON at {where}: {exc.msg}") from exc
    else:
        raise ManifestError(source, None, None, f"unknown format {fmt!r}")
    if not isinstance(top, dict):
        raise ManifestError(source, None, None, "the document must be a table/object")
    return top


def _convert(top: dict[str, Any], source: str) -> Manifest:
    raw_endpoints = top.get("endpoints")
    if not isinstance(raw_endpoints, list):
        what = "missing" if raw_endpoints is None else "must be a list of tables"
        raise ManifestError(source, "manifest", "endpoints", what)
    for i, raw in enumerate(raw_endpoints):
        ident = raw.get("id") if isinstance(raw, dict) else None
        entry = f"endpoint {ident!r}" if isinstance(ident, str) and ident else f"endpoint #{i + 1}"
        _check(raw, Endpoint, source, entry, _ENDPOINT_ENUMS)
    raw_changes = top.get("changes", [])
    if not isinstance(raw_changes, list):
        raise ManifestError(source, "manifest", "changes", "must be a list of tables")
    for i, raw in enumerate(raw_changes):
        _check(raw, Change, source, f"change {i + 1}", {"kind": ChangeKind})
    if "dns" in top:
        _check(top["dns"], DnsPolicy, source, "dns", {})
    if "time" in top:
        _check(top["time"], TimePolicy, source, "time", {})
    manifest = _check(top, Manifest, source, "manifest", {})
    found = problems(manifest)
    if found:
        first = found[0]
        raise ManifestError(source, first.entry, first.field, first.message, tuple(found))
    return manifest


_ENDPOINT_ENUMS: Mapping[str, type[Any]] = {
    "match": MatchMode,
    "transport": Transport,
    "protocol": AppProtocol,
    "direction": Direction,
    "customer_data": CustomerData,
    "requirement": Requirement,
    "lifecycle": Lifecycle,
    "pin": PinKind,
    "kind": ProbeKind,
}

_PATH = re.compile(r"^(?P<detail>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_NAMED = re.compile(r"`([^`]+)`")


def _check(raw: Any, kind: type[_T], source: str, entry: str, enums: Mapping[str, type[Any]]) -> _T:
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        field, detail = _explain(str(exc), enums)
        raise ManifestError(source, entry, field, detail) from exc


def _explain(message: str, enums: Mapping[str, type[Any]]) -> tuple[str | None, str]:
    """Turn msgspec's ``Expected `int`, got `str` - at `$.ports[0].port``` into (field, detail)."""
    m = _PATH.match(message)
    detail = m["detail"] if m else message
    path = (m["path"] or "").lstrip(".") if m else ""
    named = _NAMED.findall(detail)
    if detail.startswith("Object contains unknown field") and named:
        return _join(path, named[0]), "unknown field"
    if detail.startswith("Object missing required field") and named:
        return _join(path, named[0]), "missing (required)"
    last = re.sub(r"\[\d+\]$", "", path.rsplit(".", 1)[-1]) if path else ""
    if detail.startswith("Invalid enum value") and last in enums:
        choices = ", ".join(str(v.value) for v in enums[last])
        return path, f"{detail[len('Invalid enum value ') :]} is not one of: {choices}"
    detail = _NAMED.sub(r"\1", detail)
    return (path or None), detail[:1].lower() + detail[1:]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
