"""What a gateway sends, made storable alike on SQLite and PostgreSQL: NUL becomes U+FFFD.

PostgreSQL refuses the NUL character (U+0000) in text columns ("invalid byte sequence for
encoding UTF8: 0x00") and in jsonb strings ("unsupported Unicode escape sequence"), and jsonb
refuses NaN and the infinities; SQLite takes them all. A write that fails over such a value is
answered "unavailable, send it again later", and it would fail again every time: a message that
blocks its gateway's stream forever. So where the cloud takes a gateway's message:

* a NUL in an identifier (a point, device, stream or command id, a configuration section) is
  invalid input, refused for good like an over-long one (:func:`has_nul`);
* a NUL in free text or a JSON document (names, units, text values, log messages, health and
  preflight reports, command results and errors, the agent version) is replaced with U+FFFD, the
  replacement character, keys included, and a float JSON cannot hold (NaN, an infinity) becomes
  ``None`` (JSON ``null``): :func:`storable`. Then it is stored and answered normally.

Replacing keeps a string's length in characters, so a value that fits a column still fits.
Integers are bounded by the store's 64-bit columns (:data:`MAX_INT64`).
"""

from __future__ import annotations

import math
from typing import Any, TypeVar, cast

import msgspec

__all__ = [
    "MAX_INT64",
    "NUL",
    "REPLACEMENT",
    "has_nul",
    "holds_nul",
    "storable",
    "storable_text",
]

NUL = "\x00"
REPLACEMENT = "\ufffd"
#: The largest integer a ``BIGINT`` column holds (SQLite's INTEGER is the same 64 bits).
MAX_INT64 = (1 << 63) - 1

_T = TypeVar("_T")


def has_nul(*texts: str) -> bool:
    """Whether any of *texts* holds a NUL character."""
    return any(NUL in text for text in texts)


def holds_nul(value: Any) -> bool:
    """Whether any string in *value* holds a NUL, at any depth (dict keys and values, list
    and tuple items, msgspec struct fields): for input refused whole (an operator's request)
    rather than made storable."""
    pending: list[Any] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if NUL in item:
                return True
        elif isinstance(item, msgspec.Struct):
            pending.extend(getattr(item, name) for name in item.__struct_fields__)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return False


def storable_text(text: str) -> str:
    """*text* with every NUL replaced by U+FFFD (the same object when it holds none)."""
    return text.replace(NUL, REPLACEMENT) if NUL in text else text


def storable(value: _T) -> _T:
    """*value* as both dialects store it: NUL replaced by U+FFFD in every string it holds, and
    NaN and the infinities replaced by ``None``, in dict keys and values, list and tuple items
    and msgspec struct fields, at any depth.

    What needs no change comes back as it is (the same object), so the usual case allocates
    nothing. Two keys of a dict that become equal keep the value of the later one. Meant for
    JSON documents and the discovery types (which have no float field: a struct's would
    become ``None`` like a document's).
    """
    return cast(_T, _storable(value))


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(NUL, REPLACEMENT) if NUL in value else value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        items = [(_storable(k), _storable(v)) for k, v in value.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, value.items(), strict=True)):
            return value
        return dict(items)
    if isinstance(value, list | tuple):
        changed = [_storable(v) for v in value]
        if all(a is b for a, b in zip(changed, value, strict=True)):
            return value
        return changed if isinstance(value, list) else tuple(changed)
    if isinstance(value, msgspec.Struct):
        fields: dict[str, Any] = {}
        for name in value.__struct_fields__:
            field = getattr(value, name)
            cleaned = _storable(field)
            if cleaned is not field:
                fields[name] = cleaned
        return msgspec.structs.replace(value, **fields) if fields else value
    return value
