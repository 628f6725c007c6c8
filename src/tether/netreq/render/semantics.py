"""Matchers that read generated rules back with each vendor's documented name semantics.

``matcher(fmt, output)`` returns a function ``admits(name) -> bool`` that answers, from the
*rendered files* (not from the manifest), whether the vendor's device would let a connection to
``name`` through. The tests use them to prove every format admits each manifest name and rejects
look-alikes (``example.com.evil.com``, ``evilexample.com``, a sibling of an exact name); each
module in this package documents where the semantics come from.

These parse only what tether generates; they are not general parsers of vendor configuration.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Iterable
from typing import Any
from xml.etree import ElementTree

from tether.netreq.render.plan import RuleOutput

__all__ = ["Matcher", "UnknownMatcher", "matcher"]

Matcher = Callable[[str], bool]


class UnknownMatcher(KeyError):
    pass


def matcher(fmt: str, output: RuleOutput) -> Matcher:
    """The name matcher for ``fmt``, built from ``output``'s files."""
    try:
        build = _BUILDERS[fmt]
    except KeyError:
        raise UnknownMatcher(fmt) from None
    return build(output)


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


def _lines(text: str, comment: str = "#") -> list[str]:
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith(comment)]


# --- plain lists ----------------------------------------------------------------------------------


def _fqdn(output: RuleOutput) -> Matcher:
    entries = _lines(output.text)

    def admits(name: str) -> bool:
        name = _norm(name)
        for e in entries:
            if e.startswith("*."):
                if name.endswith(e[1:]):
                    return True
            elif name == e:
                return True
        return False

    return admits


def _fqdn_exact(output: RuleOutput) -> Matcher:
    entries = set(_lines(output.text))
    for e in entries:
        if "*" in e:
            raise ValueError(f"wildcard {e!r} in an exact-only list")
    return lambda name: _norm(name) in entries


# --- Palo Alto URL list -------------------------------------------------------------------------

_PAN_SEPARATORS = re.compile(r"[./?&=;+]")


def _pan_tokens_match(pattern: list[str], tokens: list[str]) -> bool:
    """``*`` is one or more tokens, ``^`` exactly one, anything else one equal token."""
    if not pattern:
        return not tokens
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        return any(_pan_tokens_match(rest, tokens[k:]) for k in range(1, len(tokens) + 1))
    if not tokens:
        return False
    if head == "^" or head == tokens[0]:
        return _pan_tokens_match(rest, tokens[1:])
    return False


def _pan_entry_admits(entry: str, host: str) -> bool:
    tokens = _PAN_SEPARATORS.split(host)
    if entry.endswith("/"):
        return _pan_tokens_match(_PAN_SEPARATORS.split(entry[:-1].lower()), tokens)
    # Without a trailing slash (PAN-OS before 10.2, or with the automatic slash disabled) the
    # entry is a prefix of the URL: "example.com" also matches "example.com.evil.com/".
    pattern = _PAN_SEPARATORS.split(entry.lower())
    return any(_pan_tokens_match(pattern, tokens[:k]) for k in range(1, len(tokens) + 1))


def _paloalto(output: RuleOutput) -> Matcher:
    entries = _lines(output.text, comment="\0")
    return lambda name: any(_pan_entry_admits(e, _norm(name)) for e in entries)


# --- FortiGate ------------------------------------------------------------------------------------

_EDIT = re.compile(r'^\s*edit "([^"]+)"')
_SET = re.compile(r"^\s*set (\S+) (.*)$")


def _fortigate_blocks(text: str) -> dict[str, dict[str, dict[str, str]]]:
    """``config <section>`` → ``edit <name>`` → ``set <key> <value>`` (comments skipped)."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    section: str | None = None
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("config "):
            section = line[len("config ") :]
            out.setdefault(section, {})
        elif line == "end":
            section, current = None, None
        elif (m := _EDIT.match(line)) and section is not None:
            current = out[section].setdefault(m[1], {})
        elif (m := _SET.match(line)) and current is not None:
            current[m[1]] = m[2]
        elif line == "next":
            current = None
    return out


def _fortigate(output: RuleOutput) -> Matcher:
    blocks = _fortigate_blocks(output.text)
    members = {
        name
        for group in blocks.get("firewall addrgrp", {}).values()
        for name in re.findall(r'"([^"]+)"', group.get("member", ""))
    }
    patterns = [
        obj["fqdn"].strip('"').lower()
        for name, obj in blocks.get("firewall address", {}).items()
        if obj.get("type") == "fqdn" and name in members
    ]

    def admits(name: str) -> bool:
        # Wildcard FQDNs are globs: '*' is any run of characters ('.' included).
        return any(fnmatch.fnmatchcase(_norm(name), p) for p in patterns)

    return admits


# --- Squid ----------------------------------------------------------------------------------------


def _squid(output: RuleOutput) -> Matcher:
    acls: dict[str, tuple[str, list[str]]] = {}
    access: list[tuple[str, list[str]]] = []
    for line in _lines(output.text):
        words = line.split()
        if words[0] == "acl":
            kind, values = words[2], words[3:]
            if words[1] in acls and acls[words[1]][0] != kind:
                raise ValueError(f"acl {words[1]} redefined with another type")
            acls.setdefault(words[1], (kind, []))[1].extend(values)
        elif words[0] == "http_access":
            access.append((words[1], words[2:]))

    def dstdomain(values: Iterable[str], name: str) -> bool:
        for value in values:
            v = value.lower()
            if v.startswith("."):  # the domain itself and every name under it
                if name == v[1:] or name.endswith(v):
                    return True
            elif name == v:
                return True
        return False

    def acl_matches(ref: str, name: str) -> bool:
        negate = ref.startswith("!")
        ref = ref.lstrip("!")
        if ref == "CONNECT":  # predefined: the request method is CONNECT (HTTPS through Squid)
            hit = True
        else:
            kind, values = acls[ref]
            if kind == "dstdomain":
                hit = dstdomain(values, name)
            elif kind == "port":
                hit = True  # any of the listed ports; names are what is checked here
            else:
                raise ValueError(f"unexpected acl type {kind}")
        return hit != negate

    def admits(name: str) -> bool:
        name = _norm(name)
        for action, refs in access:  # first matching line decides; none matching denies
            if all(acl_matches(r, name) for r in refs):
                return action == "allow"
        return False

    return admits


# --- Cisco ASA ------------------------------------------------------------------------------------


def _cisco_asa(output: RuleOutput) -> Matcher:
    fqdn_of: dict[str, str] = {}
    groups: dict[str, set[str]] = {}
    permitted: set[str] = set()
    obj: str | None = None
    group: str | None = None
    for raw in output.text.splitlines():
        if raw.startswith("!") or not raw.strip():
            continue
        words = raw.split()
        if raw.startswith("object network "):
            obj, group = words[2], None
        elif raw.startswith("object-group network "):
            group, obj = words[2], None
            groups[group] = set()
        elif raw.startswith(" fqdn ") and obj is not None:
            fqdn_of[obj] = words[-1].lower()  # "fqdn [v4|v6] name": one exact name
        elif raw.startswith(" network-object object ") and group is not None:
            groups[group].add(words[2])
        elif raw.startswith("access-list ") and "permit" in words and "object-group" in words:
            permitted.add(words[words.index("object-group") + 1])
            obj = group = None
    names = {fqdn_of[o] for g in permitted for o in groups.get(g, ()) if o in fqdn_of}
    return lambda name: _norm(name) in names


# --- pfSense --------------------------------------------------------------------------------------


def _pfsense(output: RuleOutput) -> Matcher:
    # Parses the XML this package generated (trusted input).
    root = ElementTree.fromstring(output.text.encode())  # noqa: S314
    names: set[str] = set()
    for alias in root.iter("alias"):
        if alias.findtext("type") == "host":
            names.update((alias.findtext("address") or "").lower().split())
    return lambda name: _norm(name) in names


# --- nftables + dnsmasq ---------------------------------------------------------------------------


def _nftables(output: RuleOutput) -> Matcher:
    nft = output.file(".nft")
    dnsmasq = output.file("-dnsmasq.conf")
    used = set(re.findall(r"daddr @(\w+) .* accept", nft))
    entries: list[tuple[str, set[str]]] = []
    for line in _lines(dnsmasq):
        if not line.startswith("nftset=/"):
            continue
        *domains, specs = line[len("nftset=/") :].split("/")
        sets = {spec.split("#")[-1] for spec in specs.split(",")}
        for d in domains:
            entries.append((d.lstrip(".").lower(), sets))

    def admits(name: str) -> bool:
        name = _norm(name)
        # dnsmasq: whole-label suffix match, the longest matching domain wins (forward.c).
        best: tuple[int, set[str]] | None = None
        for domain, sets in entries:
            under = name == domain or name.endswith("." + domain)
            if under and (best is None or len(domain) >= best[0]):
                best = (len(domain), sets)
        return best is not None and bool(best[1] & used)

    return admits


# --- AWS Network Firewall -------------------------------------------------------------------------


def _aws_target_matches(target: str, name: str) -> bool:
    if target.startswith("."):  # the domain and every name under it
        return name == target[1:] or name.endswith(target)
    return name == target


def _aws(output: RuleOutput) -> Matcher:
    groups: list[dict[str, Any]] = [json.loads(content) for _, content in output.files]
    lists = [g["RuleGroup"]["RulesSource"]["RulesSourceList"] for g in groups]
    deny = [
        t.lower() for rl in lists if rl["GeneratedRulesType"] == "DENYLIST" for t in rl["Targets"]
    ]
    allow = [
        t.lower() for rl in lists if rl["GeneratedRulesType"] == "ALLOWLIST" for t in rl["Targets"]
    ]

    def admits(name: str) -> bool:
        name = _norm(name)
        if any(_aws_target_matches(t, name) for t in deny):  # deny group evaluated first
            return False
        return any(_aws_target_matches(t, name) for t in allow)

    return admits


# --- Azure Firewall -------------------------------------------------------------------------------


def _azure(output: RuleOutput) -> Matcher:
    body = json.loads(output.text)
    app: list[str] = []
    net: set[str] = set()
    for collection in body["properties"]["ruleCollections"]:
        if collection["action"]["type"] != "Allow":
            continue
        for rule in collection["rules"]:
            if rule["ruleType"] == "ApplicationRule":
                app.extend(t.lower() for t in rule["targetFqdns"])
            elif rule["ruleType"] == "NetworkRule":
                net.update(t.lower() for t in rule.get("destinationFqdns", []))

    def app_matches(target: str, name: str) -> bool:
        # A leading '*' stands for anything to its left: '*.x' any name under x, '*x' even
        # look-alikes ending in x. Without '*', the exact name.
        return name.endswith(target[1:]) if target.startswith("*") else name == target

    def admits(name: str) -> bool:
        name = _norm(name)
        return name in net or any(app_matches(t, name) for t in app)

    return admits


_BUILDERS: dict[str, Callable[[RuleOutput], Matcher]] = {
    "fqdn": _fqdn,
    "fqdn-exact": _fqdn_exact,
    "paloalto-edl": _paloalto,
    "fortigate": _fortigate,
    "squid": _squid,
    "cisco-asa": _cisco_asa,
    "pfsense": _pfsense,
    "nftables": _nftables,
    "aws-network-firewall": _aws,
    "azure-firewall": _azure,
}
