"""What the agent makes of a TLS alert refusing its certificate, however aiohttp wraps it."""

from __future__ import annotations

import ssl

import aiohttp
import pytest

from tether.gateway.link import (
    CERTIFICATE_ALERTS,
    CertificateRefused,
    LinkRefused,
    certificate_refusal,
)

UNKNOWN_CA = "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:2580)"


def _chained(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    "error",
    [
        ssl.SSLError(1, UNKNOWN_CA),
        # aiohttp keeps the message under its own class, the TLS error as the cause…
        _chained(aiohttp.ClientOSError(1, UNKNOWN_CA), ssl.SSLError(1, UNKNOWN_CA)),
        # …or only the message.
        aiohttp.ServerDisconnectedError(UNKNOWN_CA),
        _chained(RuntimeError("upgrade failed"), ssl.SSLError(1, UNKNOWN_CA)),
    ],
    ids=["ssl-error", "client-os-error", "message-only", "cause"],
)
def test_an_unknown_ca_alert_is_a_certificate_refusal(error: BaseException) -> None:
    refused = certificate_refusal(error)
    assert isinstance(refused, CertificateRefused)
    assert isinstance(refused, LinkRefused)  # the agent backs off as for any refusal
    assert refused.alert == "TLSV1_ALERT_UNKNOWN_CA"
    assert refused.status == 0
    assert not refused.tier_specific
    assert "tlsv1 alert unknown ca" in str(refused)
    assert "not issued by this cloud's CA" in str(refused)


def test_a_connector_error_is_read_through_its_os_error() -> None:
    class _Key:
        ssl = True
        host, port = "cloud.example", 443

    error = aiohttp.ClientConnectorError(
        _Key(),  # type: ignore[arg-type]
        ssl.SSLError(1, "[SSL: SSLV3_ALERT_CERTIFICATE_EXPIRED] sslv3 alert certificate expired"),
    )
    refused = certificate_refusal(error)
    assert refused is not None
    assert refused.alert == "SSLV3_ALERT_CERTIFICATE_EXPIRED"
    assert "expired" in str(refused)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionResetError(104, "Connection reset by peer"),
        ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"),
        aiohttp.ServerDisconnectedError("Server disconnected"),
        TimeoutError(),
    ],
)
def test_other_failures_are_not_certificate_refusals(error: BaseException) -> None:
    assert certificate_refusal(error) is None


def test_a_cycle_of_causes_ends() -> None:
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__context__, second.__context__ = second, first
    assert certificate_refusal(first) is None


def test_every_alert_has_a_meaning() -> None:
    for alert, meaning in CERTIFICATE_ALERTS.items():
        assert alert.isupper()
        assert "ALERT" in alert
        refused = CertificateRefused(alert, meaning)
        assert meaning in str(refused)
