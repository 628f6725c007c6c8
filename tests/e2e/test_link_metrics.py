"""/metrics counts links opening and ending, and TLS handshakes completed and refused."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.support.cloudproc import Cloud, StartAgent, wait_for


async def _scrape(api: httpx.AsyncClient) -> dict[str, dict[tuple[Any, ...], float]]:
    response = await api.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        f.name: {tuple(sorted(s.labels.items())): s.value for s in f.samples}
        for f in text_string_to_metric_families(response.text)
    }


def _total(families: dict[str, dict[tuple[Any, ...], float]], name: str) -> float:
    return sum(families.get(name, {}).values())


async def test_links_and_handshakes_are_counted(
    cloud: Cloud, api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    before = await _scrape(api)
    gw = await start_agent("counted")

    # A client that offers only TLS 1.2: refused in the handshake, and counted with its reason.
    old = ssl.create_default_context(cafile=str(cloud.ca_path))
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        await asyncio.open_connection("127.0.0.1", cloud.port, ssl=old, server_hostname="localhost")

    await gw.stop()
    after = await wait_for(lambda: _closed_more(api, before), what="the ended link to be counted")
    assert _total(after, "tether_links_opened") - _total(before, "tether_links_opened") >= 1
    assert _total(after, "tether_tls_handshakes") - _total(before, "tether_tls_handshakes") >= 1
    failures = after["tether_tls_handshake_failures"]
    grown = {
        dict(labels)["reason"]
        for labels, value in failures.items()
        if value > before.get("tether_tls_handshake_failures", {}).get(labels, 0.0)
    }
    assert grown, failures
    assert all(reason == reason.lower() and " " not in reason for reason in grown)
    assert "unsupported-protocol" in grown
    closed = after["tether_links_closed"]
    # The agent said why it left: it is counted under the protocol's code.
    assert closed[(("code", "going-away"),)] >= 1


async def _closed_more(
    api: httpx.AsyncClient, before: dict[str, dict[tuple[Any, ...], float]]
) -> dict[str, dict[tuple[Any, ...], float]] | None:
    now = await _scrape(api)
    grown = _total(now, "tether_links_closed") > _total(before, "tether_links_closed")
    return now if grown else None
