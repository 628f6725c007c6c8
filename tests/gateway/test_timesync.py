"""The agent's clock check: NTP first, then the cloud's HTTPS Date, with the build-time floor."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.support.cloudproc import running_cloud
from tests.support.testbed.fixtures import ntp_factory  # noqa: F401  (fixture)
from tests.support.testbed.ntpserver import NTPServer

from tether.gateway import timesync
from tether.gateway.timesync import TimeSync
from tether.pki.estclient import client_ssl_context


def _sync(url: str, ca: Path | None, pools: tuple[str, ...], tmp_path: Path) -> TimeSync:
    return TimeSync(
        cloud_url=url,
        ssl_context=client_ssl_context(ca) if ca else None,
        pools=pools,
        lease_root=tmp_path,  # no lease files: only the pools
        trust_env=False,
        timeout=1.0,
    )


async def test_ntp_offset_measured_and_judged(
    tmp_path: Path,
    ntp_factory: Callable[..., NTPServer],  # noqa: F811
) -> None:
    near = ntp_factory(offset=30.0)
    state = await _sync("https://127.0.0.1:9", None, (near.address,), tmp_path).check()
    assert state.source == f"ntp:{near.address}"
    assert state.offset is not None
    assert abs(state.offset - 30.0) < 1.0
    assert state.synchronized  # 30 s is within what certificate checks tolerate

    far = ntp_factory(offset=-600.0)
    state = await _sync("https://127.0.0.1:9", None, (far.address,), tmp_path).check()
    assert state.offset is not None
    assert abs(state.offset + 600.0) < 1.0
    assert not state.synchronized
    assert state.as_report()["synchronized"] is False


async def test_https_date_when_ntp_is_blocked(
    tmp_path: Path,
    ntp_factory: Callable[..., NTPServer],  # noqa: F811
) -> None:
    silent = ntp_factory(answer=False)
    async with running_cloud(tmp_path / "cloud") as cloud:
        sync = _sync(cloud.url, cloud.ca_path, (silent.address,), tmp_path)
        state = await sync.check()
    assert state.source == "https-date"
    assert state.offset is not None
    assert abs(state.offset) < 2.0  # whole-second Date header, same host clock
    assert state.synchronized


async def test_no_source_and_clock_before_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(timesync, "BUILD_TIME", int(time.time()) + 86400)
    state = await _sync("https://127.0.0.1:9", None, (), tmp_path).check()
    assert state.source == "none"
    assert state.offset is None
    assert state.clock_before_build
    assert not state.synchronized
