"""RFC 7030 EST on the cloud's one port: ``cacerts``, ``simpleenroll``, ``simplereenroll``.

``simpleenroll`` is authorised by a one-time enrollment token (HTTP bearer, RFC 7030 §3.2.3
allows any HTTP authentication); it creates the gateway and issues its first certificate.
``simplereenroll`` is authorised by the gateway's current, valid client certificate (§4.2.2) and
issues a new one for the same gateway.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import UTC, datetime

from aiohttp import web
from cryptography import x509

from tether.cloud.identity import IdentityError
from tether.cloud.state import STATE_KEY, CloudState
from tether.cloud.store.errors import TokenAlreadyUsed, TokenExpired, TokenUnknown
from tether.pki.ca import certificate_fingerprint, certificate_serial_hex, check_csr
from tether.pki.errors import CsrInvalid, EstDecodeError
from tether.pki.est import CONTENT_TYPE_CERTS_ONLY, decode_csr, encode_certs_only

__all__ = ["routes"]

log = logging.getLogger(__name__)

_MAX_CSR = 16 * 1024
#: Seconds the CSR body may take to arrive once its head has: it is read before the caller has
#: shown anything (the token is checked afterwards), so a body trickling in would hold the
#: connection for as long as the sender liked. 16 KiB in 30 s is half a KiB per second.
BODY_TIMEOUT = 30.0


def _certs_response(body: bytes) -> web.Response:
    return web.Response(
        body=body,
        headers={"Content-Type": CONTENT_TYPE_CERTS_ONLY, "Content-Transfer-Encoding": "base64"},
    )


def _refuse(status: int, text: str) -> web.HTTPException:
    if status == 413:
        return web.HTTPRequestEntityTooLarge(max_size=_MAX_CSR, actual_size=_MAX_CSR + 1, text=text)
    exc_type: type[web.HTTPException] = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        403: web.HTTPForbidden,
        408: web.HTTPRequestTimeout,
    }[status]
    return exc_type(text=text + "\n")


async def cacerts(request: web.Request) -> web.Response:
    state: CloudState = request.app[STATE_KEY]
    return _certs_response(encode_certs_only([state.ca.certificate]))


async def _read_body(request: web.Request) -> bytes:
    """The whole request body, however many pieces it arrives in; 413 past :data:`_MAX_CSR`."""
    if request.content_length is not None and request.content_length > _MAX_CSR:
        raise _refuse(413, "certificate request too large")
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            while len(body) <= _MAX_CSR:
                # read(n) answers with what has arrived so far (up to n), not with n bytes.
                chunk = await request.content.read(_MAX_CSR + 1 - len(body))
                if not chunk:
                    return bytes(body)
                body += chunk
    except TimeoutError:
        raise _refuse(408, f"certificate request not received within {BODY_TIMEOUT:g} s") from None
    raise _refuse(413, "certificate request too large")


async def _read_csr(request: web.Request) -> x509.CertificateSigningRequest:
    """The request's CSR, checked as the CA checks it (signature, key) before anything is spent."""
    body = await _read_body(request)
    try:
        csr = decode_csr(body)
    except EstDecodeError as exc:
        raise _refuse(400, f"malformed certificate request: {exc}") from None
    try:
        check_csr(csr)
    except CsrInvalid as exc:
        raise _refuse(400, f"certificate request refused: {exc}") from None
    return csr


async def _issue(request: web.Request, gateway_id: str) -> web.Response:
    state: CloudState = request.app[STATE_KEY]
    csr = await _read_csr(request)
    now = datetime.now(UTC)
    try:
        cert = state.ca.issue_client(
            csr, gateway_id=gateway_id, lifetime=state.settings.certificate_lifetime, now=now
        )
    except CsrInvalid as exc:
        raise _refuse(400, f"certificate request refused: {exc}") from None
    await state.store.record_certificate(
        gateway_id=gateway_id,
        serial_hex=certificate_serial_hex(cert),
        fingerprint=certificate_fingerprint(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        now=now,
    )
    return _certs_response(encode_certs_only([cert]))


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise web.HTTPUnauthorized(
            text="enrollment needs an enrollment token (Authorization: Bearer <token>)\n",
            headers={"WWW-Authenticate": 'Bearer realm="tether-enrollment"'},
        )
    return value.strip()


async def simpleenroll(request: web.Request) -> web.Response:
    state: CloudState = request.app[STATE_KEY]
    secret = _bearer(request)
    now = datetime.now(UTC)
    # Read and check the request before spending the token: a CSR the CA would refuse (not
    # base64, a bad signature, a weak key) must neither burn the token nor leave a gateway
    # without a certificate behind.
    csr_checked = await _read_csr(request)
    try:
        token = await state.store.consume_enrollment_token(secret, now=now)
    except (TokenUnknown, TokenExpired, TokenAlreadyUsed) as exc:
        log.warning("enrollment refused from %s: %s", request.remote, exc)
        raise _refuse(401, f"enrollment refused: {exc}") from None
    gateway_id = "gw-" + secrets.token_hex(8)
    name = token.gateway_name or gateway_id
    cert = state.ca.issue_client(
        csr_checked,
        gateway_id=gateway_id,
        lifetime=state.settings.certificate_lifetime,
        now=now,
    )
    await state.store.create_gateway(gateway_id=gateway_id, name=name, now=now)
    await state.store.record_certificate(
        gateway_id=gateway_id,
        serial_hex=certificate_serial_hex(cert),
        fingerprint=certificate_fingerprint(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        now=now,
    )
    await state.store.audit(
        actor=f"token:{token.token_id}",
        action="gateway.enroll",
        target=gateway_id,
        detail={"name": name},
        source=request.remote,
        now=now,
    )
    log.info("gateway %s (%s) enrolled from %s", gateway_id, name, request.remote)
    return _certs_response(encode_certs_only([cert]))


async def simplereenroll(request: web.Request) -> web.Response:
    state: CloudState = request.app[STATE_KEY]
    try:
        identity = await state.gateway_identity(request)
    except IdentityError as exc:
        raise _refuse(403 if exc.status_code == 403 else 401, exc.reason_text) from None
    response = await _issue(request, identity.gateway_id)
    await state.store.audit(
        actor=f"gateway:{identity.gateway_id}",
        action="gateway.reenroll",
        target=identity.gateway_id,
        detail=None,
        source=request.remote,
        now=datetime.now(UTC),
    )
    return response


def routes() -> list[web.RouteDef]:
    return [
        web.get("/.well-known/est/cacerts", cacerts),
        web.post("/.well-known/est/simpleenroll", simpleenroll),
        web.post("/.well-known/est/simplereenroll", simplereenroll),
    ]
