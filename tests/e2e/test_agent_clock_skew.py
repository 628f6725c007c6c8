"""A host clock off the cloud's, found on a working link: warned of once, reported in health.

The agent's clock function is replaced (the system clock is not touched); the cloud is real and
stamps its Welcome with its own time.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import pytest
from tests.support.cloudproc import create_token, enroll_gateway, start_agent, wait_for

from tether.gateway.agent import CLOCK_SKEW_LIMIT

BEHIND = 300.0  # the host clock reads five minutes early


def _skew_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "the host clock is" in r.getMessage()
    ]


@pytest.mark.parametrize("tier", ["ws", "long-poll"])
async def test_a_host_clock_behind_the_clouds_is_warned_of_once_and_reported_in_health(
    tmp_path: Path, api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, tier: str
) -> None:
    caplog.set_level(logging.INFO, logger="tether.gateway")
    code = (await create_token(api, name=f"skewed-{tier}"))["enrollment_code"]
    await enroll_gateway(code, tmp_path / "gw")
    gw = start_agent(tmp_path / "gw", tier=tier)
    gw.agent.clock = lambda: time.time() - BEHIND
    try:
        await gw.wait_linked()
        offset, spread = gw.agent.clock_offset, gw.agent.clock_offset_uncertainty
        assert offset is not None
        assert spread is not None
        assert abs(offset - BEHIND) <= spread + 1.0, (offset, spread)
        warnings = _skew_warnings(caplog)
        assert len(warnings) == 1, warnings
        assert "5 min behind the cloud's" in warnings[0]
        assert "NTP" in warnings[0]

        # The health report carries the offset measured.
        async def reported() -> dict[str, object] | None:
            health = (await api.get(f"/api/v1/gateways/{gw.gateway_id}/health")).json()
            latest = health["latest"]
            return latest["time"] if latest and "cloud_offset_s" in latest["time"] else None

        clock = await wait_for(reported, what="a health report with the clock offset")
        assert isinstance(clock["cloud_offset_s"], float)
        assert abs(clock["cloud_offset_s"] - BEHIND) <= spread + 1.0, clock

        # A new link measures again, but the warning is not repeated within the hour.
        opened = gw.agent.status.links_opened
        gw.agent.request_restart("relink")
        await wait_for(lambda: gw.agent.status.links_opened > opened, what="a new link")
        assert gw.agent.clock_offset is not None
        assert abs(gw.agent.clock_offset - BEHIND) <= 5.0
        assert len(_skew_warnings(caplog)) == 1, _skew_warnings(caplog)
    finally:
        await gw.stop()


async def test_a_right_clock_is_not_warned_of_and_the_round_trip_is_allowed_for(
    tmp_path: Path, api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether.gateway")
    code = (await create_token(api, name="on-time"))["enrollment_code"]
    await enroll_gateway(code, tmp_path / "gw")
    gw = start_agent(tmp_path / "gw")
    try:
        await gw.wait_linked()
        assert gw.agent.clock_offset is not None
        assert abs(gw.agent.clock_offset) < CLOCK_SKEW_LIMIT
        assert _skew_warnings(caplog) == []
        # 62 s apparent offset over a 6 s round trip: the clock may be only 59 s off.
        now = gw.agent.clock()
        gw.agent._check_clock(now + CLOCK_SKEW_LIMIT + 2 - 3.0, 6.0)
        assert _skew_warnings(caplog) == []
        # The same offset measured over a 2 s round trip is at least 61 s: warned of.
        now = gw.agent.clock()
        gw.agent._check_clock(now + CLOCK_SKEW_LIMIT + 2 - 1.0, 2.0)
        warnings = _skew_warnings(caplog)
        assert len(warnings) == 1, warnings
        assert "62 s behind the cloud's" in warnings[0], warnings
    finally:
        await gw.stop()
