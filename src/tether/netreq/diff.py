"""What changed between two manifests, and what a site must change in its firewall.

:func:`diff_manifests` compares endpoints by id (added, removed, changed fields), the firewall
view (which host/port pairs must now be allowed, which may be removed), the DNS and time policy,
and picks the new manifest's change-log entries since the old version. :func:`render_diff` prints
it as text, Markdown or JSON.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from tether.netreq.model import (
    Change,
    Endpoint,
    Lifecycle,
    Manifest,
    MatchMode,
    Requirement,
    Transport,
)

__all__ = [
    "DIFF_FORMATS",
    "EndpointChange",
    "FieldChange",
    "ManifestDiff",
    "RuleChange",
    "diff_manifests",
    "render_diff",
]

DIFF_FORMATS = ("text", "md", "json")


class FieldChange(msgspec.Struct, frozen=True):
    field: str
    old: str
    new: str


class EndpointChange(msgspec.Struct, frozen=True):
    id: str
    host: str
    fields: tuple[FieldChange, ...]


class RuleChange(msgspec.Struct, frozen=True, order=True):
    """One name pattern on one port: the unit a firewall rule allows."""

    pattern: str
    transport: Transport
    port: int

    def __str__(self) -> str:
        return f"{self.pattern} {self.transport.value.upper()} {self.port}"


class ManifestDiff(msgspec.Struct, frozen=True):
    old_version: str
    new_version: str
    added: tuple[Endpoint, ...]
    removed: tuple[Endpoint, ...]
    changed: tuple[EndpointChange, ...]
    allow: tuple[RuleChange, ...]  # the site must add these
    revoke: tuple[RuleChange, ...]  # the site may remove these
    policy: tuple[FieldChange, ...]  # DNS and time policy
    changelog: tuple[Change, ...]  # the new manifest's entries newer than the old version
    # What a site must do about changed endpoints besides new rules (direct access, exemptions)
    actions: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.policy)

    @property
    def action_required(self) -> bool:
        """True when the site must allow something new or change how it allows something."""
        return bool(self.allow or self.actions)


# Fields compared per endpoint, in the order they are reported.
_FIELDS = (
    "host",
    "match",
    "ports",
    "protocol",
    "direction",
    "customer_data",
    "requirement",
    "lifecycle",
    "replaced_by",
    "sunset",
    "tls",
    "proxy_ok",
    "area",
    "purpose",
    "if_blocked",
)


def diff_manifests(old: Manifest, new: Manifest) -> ManifestDiff:
    old_ids = {e.id: e for e in old.endpoints}
    new_ids = {e.id: e for e in new.endpoints}
    added = tuple(e for e in new.endpoints if e.id not in old_ids)
    removed = tuple(e for e in old.endpoints if e.id not in new_ids)
    changed = []
    for e in new.endpoints:
        before = old_ids.get(e.id)
        if before is None:
            continue
        fields = tuple(_field_changes(before, e))
        if fields:
            changed.append(EndpointChange(e.id, e.host, fields))
    old_rules, new_rules = _rules(old), _rules(new)
    policy = tuple(_policy_changes(old, new))
    return ManifestDiff(
        old_version=old.version,
        new_version=new.version,
        added=added,
        removed=removed,
        changed=tuple(changed),
        allow=tuple(sorted(new_rules - old_rules)),
        revoke=tuple(sorted(old_rules - new_rules)),
        policy=policy,
        changelog=new.changes_since(old.version),
        actions=tuple(
            a for e in new.endpoints if e.id in old_ids for a in _actions(old_ids[e.id], e)
        ),
    )


def _actions(old: Endpoint, new: Endpoint) -> Iterator[str]:
    """What a site that allowed ``old`` as it was must now change for ``new``."""
    name = new.pattern
    if old.proxy_ok and not new.proxy_ok:
        yield (
            f"{name} ({new.id}) no longer works through an HTTP proxy: allow it directly "
            f"({', '.join(str(p) for p in new.ports)})"
        )
    if old.requirement is Requirement.OPTIONAL and new.requirement is Requirement.REQUIRED:
        yield f"{name} ({new.id}) is now required: allow it if it was left blocked as optional"
    if old.lifecycle is Lifecycle.LEGACY and new.lifecycle is Lifecycle.CURRENT:
        yield f"{name} ({new.id}) is current again: allow it if it was removed as legacy"
    was = old.tls.interception_tolerated if old.tls else True
    if was and new.tls is not None and not new.tls.interception_tolerated:
        yield f"{name} ({new.id}) no longer tolerates TLS interception: exempt it from decryption"


def _pattern(host: str, match: MatchMode) -> str:
    return {
        MatchMode.EXACT: host,
        MatchMode.SUBDOMAINS: f"*.{host}",
        MatchMode.APEX_AND_SUBDOMAINS: f"{host} (and *.{host})",
    }[match]


def _rules(m: Manifest) -> set[RuleChange]:
    return {
        RuleChange(_pattern(e.host, e.match), p.transport, p.port)
        for e in m.endpoints
        for p in e.ports
    }


def _show(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, tuple):
        return ", ".join(_show(v) for v in value) or "—"
    if isinstance(value, msgspec.Struct):
        return msgspec.json.encode(value).decode()
    return str(value)


def _field_changes(old: Endpoint, new: Endpoint) -> Iterator[FieldChange]:
    for name in _FIELDS:
        a, b = getattr(old, name), getattr(new, name)
        if a != b:
            yield FieldChange(name, _show(a), _show(b))


def _policy_changes(old: Manifest, new: Manifest) -> Iterator[FieldChange]:
    for section in ("dns", "time"):
        a, b = getattr(old, section), getattr(new, section)
        for name in a.__struct_fields__:
            if name == "notes":
                continue
            va, vb = getattr(a, name), getattr(b, name)
            if va != vb:
                yield FieldChange(f"{section}.{name}", _show(va), _show(vb))


def render_diff(d: ManifestDiff, fmt: str = "text") -> str:
    """The diff for people (``text``, ``md``) or programs (``json``)."""
    if fmt == "json":
        body = msgspec.to_builtins(d)
        body["action_required"] = d.action_required
        return (msgspec.json.format(msgspec.json.encode(body), indent=2) + b"\n").decode()
    if fmt not in ("text", "md"):
        raise ValueError(f"unknown diff format {fmt!r} (one of {', '.join(DIFF_FORMATS)})")
    md = fmt == "md"
    head = "## " if md else ""
    item = "- "
    out = [
        f"{'# ' if md else ''}Network requirements: {d.old_version} → {d.new_version}",
        "",
    ]
    if d.empty:
        out.append("Nothing a site needs to change.")
        return "\n".join(out) + "\n"
    out.append(
        "Action required: make the changes below before the change takes effect."
        if d.action_required
        else "No new rule is needed."
    )
    out.append("")
    if d.actions:
        out += [f"{head}Change", ""] + [f"{item}{a}" for a in d.actions] + [""]
    if d.allow:
        out += [f"{head}Allow", ""] + [f"{item}{r}" for r in d.allow] + [""]
    if d.revoke:
        out += [f"{head}May be removed (once no gateway needs them)", ""]
        out += [f"{item}{r}" for r in d.revoke] + [""]
    if d.added:
        out += [f"{head}Added endpoints", ""]
        out += [f"{item}{e.id}: {e.pattern} ({e.requirement.value}) — {e.purpose}" for e in d.added]
        out.append("")
    if d.removed:
        out += [f"{head}Removed endpoints", ""]
        out += [f"{item}{e.id}: {e.pattern}" for e in d.removed] + [""]
    if d.changed:
        out += [f"{head}Changed endpoints", ""]
        for ec in d.changed:
            out.append(f"{item}{ec.id} ({ec.host})")
            out += [f"    {item}{f.field}: {f.old} → {f.new}" for f in ec.fields]
        out.append("")
    if d.policy:
        out += [f"{head}DNS and time", ""]
        out += [f"{item}{f.field}: {f.old} → {f.new}" for f in d.policy] + [""]
    if d.changelog:
        out += [f"{head}Change log", ""]
        for c in d.changelog:
            line = f"{item}{c.version} (effective {c.effective}): {c.kind.value} {c.endpoint}: "
            out.append(line + c.summary + (f" — {c.impact}" if c.impact else ""))
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"
