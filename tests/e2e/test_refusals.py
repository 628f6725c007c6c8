"""What the cloud refuses, and that each refusal says why: foreign certificates, spent or
expired enrollment tokens, revoked gateways, missing or weak operator tokens."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tests.support.cloudproc import (
    Cloud,
    StartAgent,
    create_token,
    enroll_gateway,
    get_gateway,
    send_command,
    wait_for,
    wait_gateway,
)

from tether.cloud.store import Store
from tether.gateway.agent import AgentStopped
from tether.gateway.httptier import HttpTier
from tether.gateway.identity import renew
from tether.gateway.link import CertificateRefused, LinkRefused, WebSocketTier
from tether.pki.ca import GATEWAY_URN_PREFIX, CertificateAuthority
from tether.pki.errors import EnrollmentRefused
from tether.pki.estclient import client_ssl_context
from tether.pki.keys import build_csr, generate_private_key, private_key_pem, write_file_atomic
from tether.protocol.enrollment import decode_code, encode_code
from tether.protocol.messages import Message, Welcome


class _Core:
    """Stands in for the agent's core: records what a link delivered."""

    def __init__(self) -> None:
        self.opened = 0
        self.messages: list[Message] = []

    def on_link_open(
        self, send: Callable[[Message], None], tier: str, *, welcome: Welcome, round_trip: float
    ) -> None:
        self.opened += 1

    async def on_message(self, message: Message) -> None:
        self.messages.append(message)

    def on_link_closed(self) -> None:
        pass


def _tier(
    cloud: Cloud, credentials: Path | None, core: _Core, kind: str = "ws"
) -> WebSocketTier | HttpTier:
    context = client_ssl_context(cloud.ca_path, credentials, credentials)
    if kind != "ws":
        return HttpTier(
            mode=kind,
            url=cloud.url,
            ssl_context=context,
            core=core,
            boot_id="test",
            max_frame=1 << 20,
            proxy=None,
            trust_env=False,
            wait=1.0,
            request_timeout=10.0,
        )
    return WebSocketTier(
        url=cloud.url,
        ssl_context=context,
        core=core,
        boot_id="test",
        max_frame=1 << 20,
        proxy=None,
        trust_env=False,
        connect_timeout=10.0,
    )


def _write_credentials(path: Path, cert: x509.Certificate, key_pem: bytes) -> Path:
    write_file_atomic(path, cert.public_bytes(serialization.Encoding.PEM) + key_pem, mode=0o600)
    return path


def _foreign_ca_credentials(path: Path, gateway_id: str) -> Path:
    """A well-formed gateway certificate for *gateway_id*, from a CA the cloud never saw."""
    foreign = CertificateAuthority.generate(common_name="tether platform CA")
    key = generate_private_key()
    cert = foreign.issue_client(
        build_csr(key), gateway_id=gateway_id, lifetime=timedelta(days=1), now=datetime.now(UTC)
    )
    return _write_credentials(path, cert, private_key_pem(key))


def _self_signed_credentials(path: Path, gateway_id: str) -> Path:
    key = generate_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(GATEWAY_URN_PREFIX + gateway_id)]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return _write_credentials(path, cert, private_key_pem(key))


# --- the link -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ws", "long-poll"])
@pytest.mark.parametrize(
    "make_credentials",
    [_foreign_ca_credentials, _self_signed_credentials],
    ids=["foreign-ca", "self-signed"],
)
async def test_certificate_not_from_the_platform_ca_gets_no_link(
    tmp_path: Path,
    cloud: Cloud,
    api: httpx.AsyncClient,
    make_credentials: Callable[[Path, str], Path],
    kind: str,
) -> None:
    # Impersonate a real, enrolled gateway that has a command waiting for it.
    code = (await create_token(api, name="victim"))["enrollment_code"]
    victim = await enroll_gateway(code, tmp_path / "victim")
    waiting = await send_command(api, victim.gateway_id, "ping")
    core = _Core()
    credentials = make_credentials(tmp_path / "forged.pem", victim.gateway_id)
    with pytest.raises(CertificateRefused) as refused:
        await _tier(cloud, credentials, core, kind).run_once()
    # The cloud's TLS stack refuses the certificate with an alert the agent reads and names,
    # rather than a reset: a certificate problem, not a path that blocks this tier.
    assert refused.value.alert == "TLSV1_ALERT_UNKNOWN_CA"
    assert "not issued by this cloud's CA" in str(refused.value)
    assert "enroll the gateway again" in str(refused.value)
    assert not refused.value.tier_specific
    assert core.opened == 0
    assert core.messages == []
    command = (await api.get(f"/api/v1/commands/{waiting['id']}")).json()
    assert command["state"] == "queued"
    assert command["delivered_at"] is None
    gateway = await get_gateway(api, victim.gateway_id)
    assert gateway["linked"] is False
    assert gateway["last_seen"] is None


async def test_platform_certificate_unknown_to_the_cloud_is_refused_with_403(
    tmp_path: Path, cloud: Cloud
) -> None:
    # Signed by the platform CA but never recorded (as if issued by a leaked CA key).
    ca = CertificateAuthority.load_or_create(cloud.settings.pki_dir)
    key = generate_private_key()
    cert = ca.issue_client(
        build_csr(key), gateway_id="gw-ghost", lifetime=timedelta(days=1), now=datetime.now(UTC)
    )
    credentials = _write_credentials(tmp_path / "ghost.pem", cert, private_key_pem(key))
    core = _Core()
    with pytest.raises(LinkRefused) as refused:
        await _tier(cloud, credentials, core).run_once()
    assert refused.value.status == 403
    assert "not known to this cloud" in str(refused.value)
    assert core.opened == 0


async def test_link_without_client_certificate_is_refused_with_401(cloud: Cloud) -> None:
    core = _Core()
    with pytest.raises(LinkRefused) as refused:
        await _tier(cloud, None, core).run_once()
    assert refused.value.status == 401
    assert "client certificate is required" in str(refused.value)
    assert core.opened == 0


async def test_revoked_gateway_loses_its_link_and_every_way_back(
    cloud: Cloud, api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("building-1")
    other = await start_agent("building-2")
    identity = gw.agent.identity
    response = await api.post(f"/api/v1/gateways/{gw.gateway_id}/revoke")
    assert response.status_code == 200, response.text
    assert response.json()["revoked"] is True

    # The live link is closed by the cloud with code "revoked", and the agent gives up.
    await gw.wait_unlinked(within=5.0)
    with pytest.raises(AgentStopped, match="revoked"):
        await asyncio.wait_for(gw.task, 5.0)
    assert gw.agent.status.last_close is not None
    assert gw.agent.status.last_close.startswith("revoked:")
    gateway = await wait_gateway(api, gw.gateway_id, lambda g: not g["linked"], within=5.0)
    assert gateway["revoked"] is True
    # The other gateway is untouched.
    assert other.agent.linked.is_set()
    assert (await get_gateway(api, other.gateway_id))["linked"] is True

    # A new link with the same certificate is refused, saying why.
    core = _Core()
    with pytest.raises(LinkRefused) as refused:
        await _tier(cloud, identity.credentials_path, core).run_once()
    assert refused.value.status == 403
    assert "revoked" in str(refused.value)
    assert core.opened == 0

    # So is renewing the certificate with it (EST simplereenroll).
    with pytest.raises(EnrollmentRefused) as renewal:
        await renew(identity, trust_env=False)
    assert renewal.value.status == 403
    assert "revoked" in renewal.value.reason

    # No command can be queued for it any more.
    response = await api.post(f"/api/v1/gateways/{gw.gateway_id}/commands", json={"kind": "ping"})
    assert response.status_code == 409
    assert "revoked" in response.json()["error"]
    audit = (await api.get("/api/v1/audit")).json()
    assert any(a["action"] == "gateway.revoke" and a["target"] == gw.gateway_id for a in audit)


# --- enrollment -----------------------------------------------------------------------------


async def test_expired_enrollment_token_is_refused(tmp_path: Path, api: httpx.AsyncClient) -> None:
    token = await create_token(api, name="late", ttl_seconds=0.2)
    expires_at = datetime.fromisoformat(token["expires_at"])
    await wait_for(lambda: datetime.now(UTC) > expires_at, what="the token to expire")
    with pytest.raises(EnrollmentRefused) as refused:
        await enroll_gateway(token["enrollment_code"], tmp_path / "gw")
    assert refused.value.status == 401
    assert "expired" in refused.value.reason
    assert token["token_id"] in refused.value.reason
    assert (await api.get("/api/v1/gateways")).json() == []
    assert not (tmp_path / "gw" / "identity" / "identity.json").exists()


async def test_enrollment_token_is_single_use(tmp_path: Path, api: httpx.AsyncClient) -> None:
    code = (await create_token(api, name="once"))["enrollment_code"]
    first = await enroll_gateway(code, tmp_path / "gw-1")
    with pytest.raises(EnrollmentRefused) as refused:
        await enroll_gateway(code, tmp_path / "gw-2")
    assert refused.value.status == 401
    assert "already used" in refused.value.reason
    gateways = (await api.get("/api/v1/gateways")).json()
    assert [g["id"] for g in gateways] == [first.gateway_id]
    tokens = (await api.get("/api/v1/enrollment-tokens")).json()
    assert tokens[0]["used_at"] is not None


async def test_a_revoked_enrollment_token_is_refused_and_its_revocation_audited(
    tmp_path: Path, api: httpx.AsyncClient
) -> None:
    token = await create_token(api, name="leaked")
    revoked = await api.post(f"/api/v1/enrollment-tokens/{token['token_id']}/revoke")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    assert revoked.json()["used_at"] is None
    with pytest.raises(EnrollmentRefused) as refused:
        await enroll_gateway(token["enrollment_code"], tmp_path / "gw")
    assert refused.value.status == 401
    assert "revoked" in refused.value.reason
    assert (await api.get("/api/v1/gateways")).json() == []
    # Again: refused, saying when, and audited once.
    again = await api.post(f"/api/v1/enrollment-tokens/{token['token_id']}/revoke")
    assert again.status_code == 409
    assert "already revoked" in again.json()["error"]
    audit = (await api.get("/api/v1/audit")).json()
    entries = [e for e in audit if e["action"] == "token.revoke"]
    assert [(e["target"], e["detail"]) for e in entries] == [
        (token["token_id"], {"name": "leaked"})
    ]
    unknown = await api.post("/api/v1/enrollment-tokens/nope/revoke")
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "no enrollment token 'nope'"}


async def test_a_used_enrollment_token_cannot_be_revoked(
    tmp_path: Path, api: httpx.AsyncClient
) -> None:
    token = await create_token(api, name="used")
    identity = await enroll_gateway(token["enrollment_code"], tmp_path / "gw")
    answer = await api.post(f"/api/v1/enrollment-tokens/{token['token_id']}/revoke")
    assert answer.status_code == 409
    assert "already used" in answer.json()["error"]
    # It names the gateway the token enrolled, and how to revoke that.
    assert f"tether gateway revoke {identity.gateway_id}" in answer.json()["error"]


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("two\nlines", "control characters"),
        ("tab\there", "control characters"),
        ("x" * 129, "at most 128"),
        ("   ", "must not be empty"),
    ],
)
async def test_an_enrollment_token_name_must_be_one_printable_line(
    api: httpx.AsyncClient, name: str, words: str
) -> None:
    answer = await api.post("/api/v1/enrollment-tokens", json={"name": name})
    assert answer.status_code == 400
    assert words in answer.json()["error"]
    assert (await api.get("/api/v1/enrollment-tokens")).json() == []


async def test_unknown_enrollment_token_is_refused(
    tmp_path: Path, cloud: Cloud, api: httpx.AsyncClient
) -> None:
    genuine = decode_code((await create_token(api))["enrollment_code"])
    forged = encode_code(url=genuine.url, secret="not-a-token", ca_fingerprint=genuine.f)
    with pytest.raises(EnrollmentRefused) as refused:
        await enroll_gateway(forged, tmp_path / "gw")
    assert refused.value.status == 401
    assert "not known" in refused.value.reason
    assert (await api.get("/api/v1/gateways")).json() == []


# --- the operator API -----------------------------------------------------------------------


async def test_every_error_under_the_api_is_json_saying_what_was_wrong(
    cloud: Cloud, api: httpx.AsyncClient
) -> None:
    missing = await api.get("/api/v1/no-such-thing")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/json")
    assert missing.json() == {
        "error": "no such API path: /api/v1/no-such-thing (see /api/v1/openapi.json)"
    }
    wrong = await api.delete("/api/v1/gateways")
    assert wrong.status_code == 405
    assert wrong.json() == {
        "error": "DELETE is not allowed on /api/v1/gateways (allowed: GET, HEAD)"
    }
    assert set(wrong.headers["Allow"].split(",")) == {"GET", "HEAD"}
    huge = await api.post(
        "/api/v1/enrollment-tokens", content=b"{" + b" " * (2 * cloud.settings.max_frame) + b"}"
    )
    assert huge.status_code == 413
    assert huge.json()["error"].startswith("request body too large (at most ")
    cancel = await api.post("/api/v1/commands/nope/cancel")
    assert cancel.status_code == 404
    assert cancel.json() == {"error": "no command 'nope'"}
    for path, words in [
        ("/api/v1/commands?limit=abc", "limit must be a whole number, not 'abc'"),
        ("/api/v1/commands?state=done", "state must be one of queued, delivered"),
        ("/api/v1/audit?limit=0", "limit must be within 1..10000"),
    ]:
        answer = await api.get(path)
        assert answer.status_code == 400, path
        assert words in answer.json()["error"], (path, answer.text)
    # Outside the API, aiohttp's own answers are left as they are.
    assert (await api.get("/no-such-page")).status_code == 404


async def test_log_queries_take_level_names_in_any_case_and_refuse_others(
    api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("building-1")
    path = f"/api/v1/gateways/{gw.gateway_id}/logs"
    assert (await api.get(path, params={"level": "WARNING"})).status_code == 200
    bogus = await api.get(path, params={"level": "bogus"})
    assert bogus.status_code == 400
    assert bogus.json() == {"error": "level must be one of debug, info, warning, error, critical"}
    for limit in ("0", "5001"):
        refused = await api.get(path, params={"limit": limit})
        assert refused.status_code == 400
        assert refused.json() == {"error": "limit must be within 1..5000"}


@pytest.mark.parametrize(
    ("section", "data", "words"),
    [
        ("firmware", {"x": 1}, "unknown configuration section 'firmware'"),
        ("agent", {"health_interval": 1}, "health_interval must be within 5..86400"),
        ("logs", {"level": "loud"}, "log level must be one of"),
        ("connectors", {"instances": {"a b": {"connector": "x"}}}, "instance 'a b': name must"),
        ("connectors", {"instances": {"sim": {}}}, "connectors configuration"),
        ("connectors", {"instance": {}}, "connectors configuration"),
        (
            "connectors",
            {"instances": {"sim": {"connector": "simulated-building", "config": {"seed": "x"}}}},
            "instance 'sim' (simulated-building)",
        ),
    ],
)
async def test_a_configuration_no_agent_would_apply_is_refused_before_it_is_stored(
    api: httpx.AsyncClient, start_agent: StartAgent, section: str, data: Any, words: str
) -> None:
    gw = await start_agent("building-1")
    path = f"/api/v1/gateways/{gw.gateway_id}/config"
    answer = await api.put(f"{path}/{section}", json=data)
    assert answer.status_code == 400
    assert words in answer.json()["error"], answer.text
    assert (await api.get(path)).json() == []
    audit = (await api.get("/api/v1/audit")).json()
    assert not [e for e in audit if e["action"] == "config.set"]


async def test_a_revoked_gateway_takes_no_configuration(
    api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("building-1")
    assert (await api.post(f"/api/v1/gateways/{gw.gateway_id}/revoke")).status_code == 200
    answer = await api.put(
        f"/api/v1/gateways/{gw.gateway_id}/config/agent", json={"health_interval": 30}
    )
    assert answer.status_code == 409
    assert answer.json() == {"error": f"gateway {gw.gateway_id!r} is revoked"}


async def test_revoking_a_gateway_twice_says_so_and_audits_once(
    api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("building-1")
    first = await api.post(f"/api/v1/gateways/{gw.gateway_id}/revoke")
    assert first.status_code == 200
    again = await api.post(f"/api/v1/gateways/{gw.gateway_id}/revoke")
    assert again.status_code == 409
    assert again.json()["error"].startswith(f"gateway '{gw.gateway_id}' was already revoked at ")
    audit = (await api.get("/api/v1/audit")).json()
    assert [e["target"] for e in audit if e["action"] == "gateway.revoke"] == [gw.gateway_id]


async def _api_token(cloud: Cloud, role: str) -> str:
    store = await Store.open(cloud.database)
    try:
        _, secret = await store.create_api_token(
            name=f"a {role}", role=role, created_by="test", now=datetime.now(UTC)
        )
    finally:
        await store.close()
    return secret


async def test_operator_api_needs_a_valid_bearer_token(cloud: Cloud) -> None:
    async with cloud.api(auth=False) as anonymous:
        response = await anonymous.get("/api/v1/gateways")
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/json")
        assert "API token is required" in response.json()["error"]
        assert response.headers["www-authenticate"].startswith("Bearer")
        basic = await anonymous.get("/api/v1/gateways", headers={"Authorization": "Basic eDp5"})
        assert basic.status_code == 401
        assert "error" in basic.json()
    async with cloud.api("tt_not-a-real-token") as wrong:
        response = await wrong.post("/api/v1/enrollment-tokens", json={})
        assert response.status_code == 401
        assert response.json() == {"error": "API token unknown, expired or revoked"}


async def test_roles_limit_what_a_token_may_do(
    cloud: Cloud, api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("building-1")
    async with cloud.api(await _api_token(cloud, "viewer")) as viewer:
        assert (await viewer.get("/api/v1/whoami")).json()["role"] == "viewer"
        listing = await viewer.get("/api/v1/gateways")
        assert listing.status_code == 200
        assert [g["id"] for g in listing.json()] == [gw.gateway_id]
        for method, path, body in [
            ("POST", f"/api/v1/gateways/{gw.gateway_id}/commands", {"kind": "ping"}),
            ("POST", "/api/v1/enrollment-tokens", {}),
            ("POST", f"/api/v1/gateways/{gw.gateway_id}/revoke", None),
            ("GET", "/api/v1/audit", None),
        ]:
            response = await viewer.request(method, path, json=body)
            assert response.status_code == 403, (path, response.text)
            assert response.json()["error"].startswith("role 'viewer' may not ")
    async with cloud.api(await _api_token(cloud, "operator")) as operator:
        sent = await operator.post(
            f"/api/v1/gateways/{gw.gateway_id}/commands", json={"kind": "ping"}
        )
        assert sent.status_code == 201
        revoke = await operator.post(f"/api/v1/gateways/{gw.gateway_id}/revoke")
        assert revoke.status_code == 403
        assert revoke.json() == {"error": "role 'operator' may not revoke gateways"}
    # Only the operator's command exists, and the gateway was not revoked.
    commands = (await api.get("/api/v1/commands")).json()
    assert [c["id"] for c in commands] == [sent.json()["id"]]
    assert commands[0]["created_by"] == "a operator (operator)"
    assert (await get_gateway(api, gw.gateway_id))["revoked"] is False
