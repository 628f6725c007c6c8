"""Tests for tether.pki.estclient against a real EST server over TLS 1.3 on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import uvloop
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from tether.pki import est
from tether.pki.ca import CertificateAuthority, gateway_id_from_certificate
from tether.pki.errors import (
    CaFingerprintMismatch,
    CsrInvalid,
    EnrollmentPending,
    EnrollmentRefused,
    EstDecodeError,
    EstHttpError,
    EstTransportError,
    InsecureKeyFile,
    PkiFileError,
    ServerCertificateRejected,
)
from tether.pki.estclient import (
    client_ssl_context,
    fetch_cacerts_bootstrap,
    normalize_fingerprint,
    simpleenroll,
    simplereenroll,
)
from tether.pki.keys import build_csr, generate_private_key, write_pem, write_private_key

TOKENS = {"good-token": "gw-7"}
PENDING_TOKEN = "pending-token"


# -- a small EST server (RFC 7030 subset) built on the codec ----------------------------------


@dataclass
class EstServer:
    """What the test server saw; ``base_url`` is where it listens."""

    base_url: str = ""
    authorizations: list[str | None] = field(default_factory=list)
    cacerts_requests: int = 0


def _certs_response(certs: list[x509.Certificate]) -> web.Response:
    return web.Response(
        body=est.encode_certs_only(certs),
        headers={
            "Content-Type": est.CONTENT_TYPE_CERTS_ONLY,
            "Content-Transfer-Encoding": est.CONTENT_TRANSFER_ENCODING,
        },
    )


def _peer_certificate(request: web.Request) -> x509.Certificate | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


def _issue(ca: CertificateAuthority, body: bytes, gateway_id: str) -> web.Response:
    try:
        csr = est.decode_csr(body)
        cert = ca.issue_client(
            csr, gateway_id=gateway_id, lifetime=timedelta(days=1), now=datetime.now(UTC)
        )
    except (EstDecodeError, CsrInvalid) as exc:
        return web.Response(status=400, text=str(exc))
    return _certs_response([cert])


def _est_app(
    ca: CertificateAuthority, seen: EstServer, served_ca: x509.Certificate
) -> web.Application:
    async def cacerts(request: web.Request) -> web.Response:
        seen.cacerts_requests += 1
        seen.authorizations.append(request.headers.get("Authorization"))
        return _certs_response([served_ca])

    async def simpleenroll_handler(request: web.Request) -> web.Response:
        authorization = request.headers.get("Authorization")
        seen.authorizations.append(authorization)
        token = (authorization or "").removeprefix("Bearer ")
        if token == PENDING_TOKEN:
            return web.Response(status=202, headers={"Retry-After": "60"})
        if token not in TOKENS:
            return web.Response(status=401, text="enrollment token unknown or already used")
        if not est.media_type_matches(request.content_type, est.CONTENT_TYPE_PKCS10):
            return web.Response(status=415, text="expected application/pkcs10")
        return _issue(ca, await request.read(), TOKENS[token])

    async def simplereenroll_handler(request: web.Request) -> web.Response:
        peer = _peer_certificate(request)
        if peer is None:
            return web.Response(status=401, text="client certificate required")
        return _issue(ca, await request.read(), gateway_id_from_certificate(peer))

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound(est.CACERTS_PATH)

    app = web.Application()
    app.router.add_get("/moved" + est.CACERTS_PATH, moved)
    app.router.add_get("/prefixed" + est.CACERTS_PATH, cacerts)
    app.router.add_get(est.CACERTS_PATH, cacerts)
    app.router.add_post(est.SIMPLEENROLL_PATH, simpleenroll_handler)
    app.router.add_post(est.SIMPLEREENROLL_PATH, simplereenroll_handler)
    return app


def _server_context(
    issuer: CertificateAuthority, client_ca: CertificateAuthority, hostnames: list[str], tmp: Path
) -> ssl.SSLContext:
    key_pem, cert_pem = issuer.issue_server(
        hostnames, lifetime=timedelta(days=30), now=datetime.now(UTC)
    )
    tmp.mkdir(parents=True, exist_ok=True)
    key_path = tmp / "server.key"
    write_private_key(key_path, serialization.load_pem_private_key(key_pem, None))  # type: ignore[arg-type]
    write_pem(tmp / "server.pem", cert_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(tmp / "server.pem", key_path)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cadata=client_ca.certificate_pem().decode())
    return context


ServerFactory = Callable[..., "contextlib.AbstractAsyncContextManager[EstServer]"]


@pytest.fixture
def platform_ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca")


@pytest.fixture
def est_server_factory(
    platform_ca: CertificateAuthority, tmp_path: Path
) -> Callable[..., contextlib.AbstractAsyncContextManager[EstServer]]:
    @contextlib.asynccontextmanager
    async def start(
        *,
        tls_issuer: CertificateAuthority | None = None,
        hostnames: tuple[str, ...] = ("127.0.0.1",),
    ) -> AsyncIterator[EstServer]:
        issuer = tls_issuer if tls_issuer is not None else platform_ca
        context = _server_context(issuer, platform_ca, list(hostnames), tmp_path / "server")
        seen = EstServer()
        runner = web.AppRunner(_est_app(platform_ca, seen, platform_ca.certificate))
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
            await site.start()
            host, port = runner.addresses[0][:2]
            seen.base_url = f"https://{host}:{port}"
            yield seen
        finally:
            await runner.cleanup()

    return start


@pytest.fixture
async def est_server(
    est_server_factory: Callable[..., contextlib.AbstractAsyncContextManager[EstServer]],
) -> AsyncIterator[EstServer]:
    async with est_server_factory() as server:
        yield server


async def _enroll(server: EstServer, ca: CertificateAuthority, tmp_path: Path) -> tuple[Path, Path]:
    key = generate_private_key()
    cert = await simpleenroll(
        server.base_url, token="good-token", csr=build_csr(key, "gw"), ca=ca.certificate
    )
    write_private_key(tmp_path / "gw.key", key)
    write_pem(tmp_path / "gw.pem", cert.public_bytes(serialization.Encoding.PEM))
    return tmp_path / "gw.pem", tmp_path / "gw.key"


# -- bootstrap --------------------------------------------------------------------------------


async def test_bootstrap_returns_the_pinned_ca(
    est_server: EstServer, platform_ca: CertificateAuthority
) -> None:
    ca = await fetch_cacerts_bootstrap(est_server.base_url, platform_ca.fingerprint())
    assert ca == platform_ca.certificate
    assert est_server.authorizations == [None]  # nothing secret on the provisional connection


async def test_bootstrap_accepts_other_fingerprint_spellings(
    est_server: EstServer, platform_ca: CertificateAuthority
) -> None:
    hex_digits = platform_ca.fingerprint().removeprefix("sha256:")
    colons = ":".join(hex_digits[i : i + 2] for i in range(0, 64, 2)).upper()
    assert normalize_fingerprint(colons) == platform_ca.fingerprint()
    ca = await fetch_cacerts_bootstrap(est_server.base_url + "/", f"SHA256:{colons}")
    assert ca == platform_ca.certificate


async def test_bootstrap_refuses_a_wrong_fingerprint(
    est_server: EstServer, platform_ca: CertificateAuthority
) -> None:
    other = CertificateAuthority.generate()
    with pytest.raises(CaFingerprintMismatch) as caught:
        await fetch_cacerts_bootstrap(est_server.base_url, other.fingerprint())
    assert caught.value.expected == other.fingerprint()
    assert caught.value.served == [platform_ca.fingerprint()]
    assert est_server.cacerts_requests == 1


async def test_bootstrap_refuses_a_server_certificate_from_another_ca(
    est_server_factory: ServerFactory, platform_ca: CertificateAuthority
) -> None:
    # An impostor that copied the public CA certificate but holds no certificate from it.
    impostor_ca = CertificateAuthority.generate()
    async with est_server_factory(tls_issuer=impostor_ca) as server:
        with pytest.raises(ServerCertificateRejected, match="signature"):
            await fetch_cacerts_bootstrap(server.base_url, platform_ca.fingerprint())
        assert server.cacerts_requests == 1


async def test_bootstrap_refuses_a_server_certificate_for_another_host(
    est_server_factory: ServerFactory, platform_ca: CertificateAuthority
) -> None:
    async with est_server_factory(hostnames=("elsewhere.example",)) as server:
        with pytest.raises(ServerCertificateRejected, match="subjectAltName"):
            await fetch_cacerts_bootstrap(server.base_url, platform_ca.fingerprint())


async def test_bootstrap_honours_a_path_prefix_and_does_not_follow_redirects(
    est_server: EstServer, platform_ca: CertificateAuthority
) -> None:
    fingerprint = platform_ca.fingerprint()
    ca = await fetch_cacerts_bootstrap(est_server.base_url + "/prefixed/", fingerprint)
    assert ca == platform_ca.certificate
    with pytest.raises(EstHttpError) as caught:
        await fetch_cacerts_bootstrap(est_server.base_url + "/moved", fingerprint)
    assert caught.value.status == 302
    assert est_server.cacerts_requests == 1


async def test_bootstrap_argument_errors(platform_ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="https"):
        await fetch_cacerts_bootstrap("http://127.0.0.1:1", platform_ca.fingerprint())
    with pytest.raises(ValueError, match="malformed CA fingerprint"):
        await fetch_cacerts_bootstrap("https://127.0.0.1:1", "sha256:1234")


async def test_bootstrap_unreachable_server_is_a_transport_error(
    platform_ca: CertificateAuthority,
) -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    with pytest.raises(EstTransportError, match=f"cannot connect to 127.0.0.1:{port}"):
        await fetch_cacerts_bootstrap(f"https://127.0.0.1:{port}", platform_ca.fingerprint())


def test_bootstrap_under_uvloop(
    est_server_factory: ServerFactory, platform_ca: CertificateAuthority
) -> None:
    # The agent runs on uvloop: the peer certificate must be readable there too.
    async def scenario() -> tuple[x509.Certificate, type[Exception]]:
        async with est_server_factory() as server:
            ca = await fetch_cacerts_bootstrap(server.base_url, platform_ca.fingerprint())
        async with est_server_factory(tls_issuer=CertificateAuthority.generate()) as server:
            try:
                await fetch_cacerts_bootstrap(server.base_url, platform_ca.fingerprint())
            except ServerCertificateRejected as exc:
                return ca, type(exc)
        raise AssertionError("impostor accepted")

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        ca, refusal = runner.run(scenario())
    assert ca == platform_ca.certificate
    assert refusal is ServerCertificateRejected


# -- enrollment -------------------------------------------------------------------------------


async def test_simpleenroll_issues_a_client_certificate(
    est_server: EstServer, platform_ca: CertificateAuthority
) -> None:
    key = generate_private_key()
    cert = await simpleenroll(
        est_server.base_url,
        token="good-token",
        csr=build_csr(key, "my-name-is-ignored"),
        ca=platform_ca.certificate,
    )
    assert cert.public_key() == key.public_key()
    assert gateway_id_from_certificate(cert) == "gw-7"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert est_server.authorizations == ["Bearer good-token"]


async def test_simpleenroll_refusal_carries_status_and_text(
    est_server: EstServer, platform_ca: CertificateAuthority
) -> None:
    with pytest.raises(EnrollmentRefused) as caught:
        await simpleenroll(
            est_server.base_url,
            token="stale-token",
            csr=build_csr(generate_private_key()),
            ca=platform_ca.certificate,
        )
    assert caught.value.status == 401
    assert caught.value.reason == "enrollment token unknown or already used"
    assert "401" in str(caught.value)
    assert "already used" in str(caught.value)
    assert isinstance(caught.value, EstHttpError)


async def test_simpleenroll_pending(
    est_server: EstServer, platform_ca: CertificateAuthority
) -> None:
    with pytest.raises(EnrollmentPending) as caught:
        await simpleenroll(
            est_server.base_url,
            token=PENDING_TOKEN,
            csr=build_csr(generate_private_key()),
            ca=platform_ca.certificate,
        )
    assert caught.value.retry_after == 60


async def test_simpleenroll_never_sends_the_token_to_an_unverified_server(
    est_server_factory: ServerFactory, platform_ca: CertificateAuthority
) -> None:
    # A TLS-intercepting middlebox presents a certificate from its own CA.
    async with est_server_factory(tls_issuer=CertificateAuthority.generate()) as server:
        with pytest.raises(ServerCertificateRejected, match="intercept"):
            await simpleenroll(
                server.base_url,
                token="good-token",
                csr=build_csr(generate_private_key()),
                ca=platform_ca.certificate,
            )
        assert server.authorizations == []


async def test_simpleenroll_refuses_a_server_named_otherwise(
    est_server_factory: ServerFactory, platform_ca: CertificateAuthority
) -> None:
    async with est_server_factory(hostnames=("localhost",)) as server:
        with pytest.raises(ServerCertificateRejected):
            await simpleenroll(
                server.base_url,
                token="good-token",
                csr=build_csr(generate_private_key()),
                ca=platform_ca.certificate,
            )
        assert server.authorizations == []


async def test_simplereenroll_with_mutual_tls(
    est_server: EstServer, platform_ca: CertificateAuthority, tmp_path: Path
) -> None:
    cert_path, key_path = await _enroll(est_server, platform_ca, tmp_path)
    new_key = generate_private_key()
    renewed = await simplereenroll(
        est_server.base_url,
        csr=build_csr(new_key, "gw-7"),
        ca=platform_ca.certificate,
        client_cert_path=cert_path,
        client_key_path=key_path,
    )
    assert renewed.public_key() == new_key.public_key()
    assert gateway_id_from_certificate(renewed) == "gw-7"


async def test_reenroll_without_client_certificate_is_refused(
    est_server: EstServer, platform_ca: CertificateAuthority
) -> None:
    context = client_ssl_context(platform_ca.certificate)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            est_server.base_url + est.SIMPLEREENROLL_PATH,
            data=est.encode_csr(build_csr(generate_private_key())),
            headers={"Content-Type": est.CONTENT_TYPE_PKCS10},
            ssl=context,
        ) as response,
    ):
        assert response.status == 401
        assert await response.text() == "client certificate required"


async def test_reenroll_with_a_foreign_client_certificate_fails(
    est_server: EstServer, platform_ca: CertificateAuthority, tmp_path: Path
) -> None:
    foreign_ca = CertificateAuthority.generate()
    key = generate_private_key()
    cert = foreign_ca.issue_client(
        build_csr(key), gateway_id="gw-7", lifetime=timedelta(days=1), now=datetime.now(UTC)
    )
    write_private_key(tmp_path / "f.key", key)
    write_pem(tmp_path / "f.pem", cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(EstTransportError):
        await simplereenroll(
            est_server.base_url,
            csr=build_csr(generate_private_key()),
            ca=platform_ca.certificate,
            client_cert_path=tmp_path / "f.pem",
            client_key_path=tmp_path / "f.key",
        )


# -- TLS contexts ------------------------------------------------------------------------------


def test_client_ssl_context_trusts_only_the_platform_ca(
    platform_ca: CertificateAuthority, tmp_path: Path
) -> None:
    write_pem(tmp_path / "ca.pem", platform_ca.certificate_pem())
    for ca in (platform_ca.certificate, tmp_path / "ca.pem", str(tmp_path / "ca.pem")):
        context = client_ssl_context(ca)
        assert context.minimum_version == ssl.TLSVersion.TLSv1_3
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname
        assert context.verify_flags & ssl.VERIFY_X509_STRICT
        trusted = context.get_ca_certs(binary_form=True)
        assert trusted == [platform_ca.certificate.public_bytes(serialization.Encoding.DER)]


async def test_client_ssl_context_refuses_bad_files(
    est_server: EstServer, platform_ca: CertificateAuthority, tmp_path: Path
) -> None:
    with pytest.raises(PkiFileError):
        client_ssl_context(tmp_path / "absent.pem")
    with pytest.raises(ValueError, match="key_path"):
        client_ssl_context(platform_ca.certificate, key_path=tmp_path / "k")
    cert_path, key_path = await _enroll(est_server, platform_ca, tmp_path)
    key_path.chmod(0o640)
    with pytest.raises(InsecureKeyFile):
        client_ssl_context(platform_ca.certificate, cert_path, key_path)
    key_path.chmod(0o600)
    with pytest.raises(PkiFileError, match="client certificate"):
        client_ssl_context(platform_ca.certificate, cert_path, tmp_path / "missing.key")


# -- through an HTTPS (CONNECT) proxy ----------------------------------------------------------


class ConnectProxy:
    """A minimal forward proxy: CONNECT to loopback only, recording each target."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
            host, _, port = target.rpartition(":")
            if method != "CONNECT" or host != "127.0.0.1":
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            self.targets.append(target)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    finally:
        sink.close()


async def test_bootstrap_and_enroll_through_a_connect_proxy(
    est_server: EstServer, platform_ca: CertificateAuthority
) -> None:
    target = est_server.base_url.removeprefix("https://")
    async with ConnectProxy() as proxy:
        ca = await fetch_cacerts_bootstrap(
            est_server.base_url, platform_ca.fingerprint(), proxy=proxy.url
        )
        cert = await simpleenroll(
            est_server.base_url,
            token="good-token",
            csr=build_csr(generate_private_key()),
            ca=ca,
            proxy=proxy.url,
        )
    assert ca == platform_ca.certificate
    assert gateway_id_from_certificate(cert) == "gw-7"
    assert proxy.targets == [target, target]
