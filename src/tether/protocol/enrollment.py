"""The enrollment code an operator hands to a gateway: where to enroll, and whom to trust.

One string carries the cloud's URL, the one-time token secret, and the SHA-256 fingerprint of the
platform CA (as kubeadm's discovery hash does), so ``tether gateway enroll CODE`` needs nothing
else and never trusts a server it cannot verify::

    tether-enroll-1.<base64url(JSON {"u": url, "s": secret, "f": "sha256:<hex>"})>
"""

from __future__ import annotations

import base64
import binascii
import re

import msgspec

__all__ = ["EnrollmentCode", "EnrollmentCodeError", "decode_code", "encode_code"]

_PREFIX = "tether-enroll-1."
_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")


class EnrollmentCodeError(ValueError):
    """The enrollment code is mangled (a copy-paste went wrong) or of an unknown version."""


class EnrollmentCode(msgspec.Struct, frozen=True):
    u: str  # the cloud's base URL, https://host[:port]
    s: str  # the token secret
    f: str  # sha256:<hex> of the platform CA certificate (DER)

    @property
    def url(self) -> str:
        return self.u

    @property
    def secret(self) -> str:
        return self.s

    @property
    def ca_fingerprint(self) -> str:
        return self.f


def encode_code(*, url: str, secret: str, ca_fingerprint: str) -> str:
    body = msgspec.json.encode(EnrollmentCode(u=url, s=secret, f=ca_fingerprint))
    return _PREFIX + base64.urlsafe_b64encode(body).decode().rstrip("=")


def decode_code(code: str) -> EnrollmentCode:
    code = code.strip()
    if not code.startswith(_PREFIX):
        raise EnrollmentCodeError(
            f"not a tether enrollment code (expected it to start {_PREFIX!r})"
        )
    raw = code[len(_PREFIX) :]
    try:
        body = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        parsed = msgspec.json.decode(body, type=EnrollmentCode)
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise EnrollmentCodeError(f"enrollment code is damaged: {exc}") from None
    if not parsed.u.startswith("https://"):
        raise EnrollmentCodeError("enrollment code names a non-HTTPS cloud URL")
    if not _FINGERPRINT.fullmatch(parsed.f):
        raise EnrollmentCodeError("enrollment code carries no valid CA fingerprint")
    return parsed
