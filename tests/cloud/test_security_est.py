"""EST enrollment under attack, against a real cloud on loopback: a request the CA would refuse
spends nothing, a body that arrives in pieces is read whole, one token enrolls one gateway."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tests.support.cloudproc import Cloud, create_token

from tether.pki.ca import GATEWAY_URN_PREFIX, gateway_id_from_certificate
from tether.pki.est import SIMPLEENROLL_PATH, decode_certs_only, encode_csr
from tether.pki.keys import build_csr, generate_private_key
from tether.protocol.enrollment import decode_code


async def _secret(api: httpx.AsyncClient, name: str) -> str:
    return decode_code((await create_token(api, name=name))["enrollment_code"]).secret


async def _enroll(cloud: Cloud, secret: str, body: bytes) -> httpx.Response:
    async with cloud.api(auth=False) as client:
        return await client.post(
            SIMPLEENROLL_PATH,
            content=body,
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/pkcs10"},
        )


def _bad_signature_csr() -> bytes:
    der = bytearray(build_csr(generate_private_key()).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # inside the signature: the CSR still parses, its signature no longer holds
    return encode_csr(x509.load_der_x509_csr(bytes(der)))


def _weak_key_csr() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return encode_csr(csr)


async def _gateway_names(api: httpx.AsyncClient) -> list[str]:
    response = await api.get("/api/v1/gateways")
    assert response.status_code == 200
    return [g["name"] for g in response.json()]


@pytest.mark.parametrize(
    ("make_csr", "reason"),
    [(_bad_signature_csr, "signature is invalid"), (_weak_key_csr, "1024 bits refused")],
    ids=["bad-signature", "weak-key"],
)
async def test_a_csr_the_ca_refuses_spends_no_token_and_leaves_no_gateway(
    cloud: Cloud, api: httpx.AsyncClient, make_csr: object, reason: str
) -> None:
    assert callable(make_csr)
    secret = await _secret(api, "site-refused")
    refused = await _enroll(cloud, secret, make_csr())
    assert refused.status_code == 400
    assert reason in refused.text
    assert "site-refused" not in await _gateway_names(api)

    enrolled = await _enroll(cloud, secret, encode_csr(build_csr(generate_private_key())))
    assert enrolled.status_code == 200, enrolled.text
    assert (await _gateway_names(api)).count("site-refused") == 1


async def test_a_csr_arriving_in_pieces_is_read_whole(cloud: Cloud, api: httpx.AsyncClient) -> None:
    secret = await _secret(api, "site-slow")
    body = encode_csr(build_csr(generate_private_key()))
    head = (
        f"POST {SIMPLEENROLL_PATH} HTTP/1.1\r\nHost: {cloud.settings.hostname}\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Type: application/pkcs10\r\n"
        f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", cloud.port, ssl=cloud.ssl_context(), server_hostname="127.0.0.1"
    )
    try:
        half = len(body) // 2
        writer.write(head + b"%x\r\n%s\r\n" % (half, body[:half]))
        await writer.drain()
        # The server answers only once the body has ended: until then it must wait for it.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.5)
        rest = body[half:]
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 200 OK", answer[:300]
    assert "site-slow" in await _gateway_names(api)


async def test_one_token_enrolls_one_gateway_when_used_twice_at_once(
    cloud: Cloud, api: httpx.AsyncClient
) -> None:
    secret = await _secret(api, "site-race")
    bodies = [encode_csr(build_csr(generate_private_key())) for _ in range(4)]
    answers = await asyncio.gather(*(_enroll(cloud, secret, body) for body in bodies))
    assert sorted(a.status_code for a in answers) == [200, 401, 401, 401]
    assert (await _gateway_names(api)).count("site-race") == 1


async def test_the_issued_certificate_takes_nothing_from_the_csr_but_its_key(
    cloud: Cloud, api: httpx.AsyncClient
) -> None:
    key = generate_private_key()
    victim = "gw-0123456789abcdef"
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, victim)]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("127.0.0.1"),
                    x509.UniformResourceIdentifier(GATEWAY_URN_PREFIX + victim),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    answer = await _enroll(cloud, await _secret(api, "site-greedy"), encode_csr(csr))
    assert answer.status_code == 200, answer.text
    (cert,) = decode_certs_only(answer.content)
    gateway_id = gateway_id_from_certificate(cert)
    assert gateway_id != victim
    assert cert.subject.rfc4514_string() == f"CN={gateway_id}"
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(GATEWAY_URN_PREFIX + gateway_id)]
    assert cert.not_valid_after_utc > datetime.now(UTC)
