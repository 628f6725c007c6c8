"""The agent's view of time: how far the host clock is off, and from which source it knows.

Order (DESIGN.md, principle 1): NTP servers DHCP advertised, then the configured pool, then the
``Date`` header of the cloud's HTTPS answer; the software's build time is a floor below which
the clock is certainly wrong (certificate checks would then fail). The agent does not set the
clock itself (that needs privileges); it measures, reports in its health, and an appliance's
hook may act on it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tether import BUILD_TIME
from tether.netcheck.dhcp import read_leases
from tether.netcheck.timecheck import MAX_OFFSET, NtpError, parse_http_date, sntp_query

__all__ = ["TimeState", "TimeSync", "cloud_clock_offset", "describe_offset"]

log = logging.getLogger(__name__)

#: OpenSSL's X509_V_FLAG_NO_CHECK_TIME (not named by the ssl module): verify the chain, not the
#: validity periods, so a host whose clock is wrong can still authenticate the cloud's answer.
_NO_CHECK_TIME = 0x200000


def describe_offset(seconds: float) -> str:
    """A clock offset for people: "400 days", "3 h", "12 min", "40 s"."""
    size = abs(seconds)
    if size >= 2 * 86400:
        return f"{size / 86400:.0f} days"
    if size >= 2 * 3600:
        return f"{size / 3600:.0f} h"
    if size >= 120:
        return f"{size / 60:.0f} min"
    return f"{size:.0f} s"


def _time_blind_context(pinned: ssl.SSLContext) -> ssl.SSLContext:
    """A client context trusting what *pinned* trusts, blind to validity periods only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["http/1.1"])
    anchors = pinned.get_ca_certs(binary_form=True)
    if not anchors:
        raise ValueError("the link's TLS context trusts no CA")
    context.load_verify_locations(cadata=b"".join(anchors))
    context.verify_flags |= _NO_CHECK_TIME
    return context


async def cloud_clock_offset(
    cloud_url: str,
    pinned: ssl.SSLContext,
    *,
    proxy: str | None,
    trust_env: bool,
    within: float = 10.0,
) -> float | None:
    """Seconds to add to the host clock to read the cloud's (its HTTPS ``Date``), or None.

    Used when TLS refused the cloud's certificate for its validity period: the connection
    still verifies the chain against the pinned CA (so the ``Date`` is the cloud's), but not
    the validity periods, which a wrong host clock contradicts.
    """
    try:
        context = _time_blind_context(pinned)
    except (ValueError, ssl.SSLError) as exc:
        log.debug("no clock check: %s", exc)
        return None
    url = cloud_url.rstrip("/") + "/.well-known/tether/hello"
    try:
        async with aiohttp.ClientSession(
            trust_env=trust_env, timeout=aiohttp.ClientTimeout(total=within)
        ) as http:
            sent = time.time()
            async with http.get(url, ssl=context, proxy=proxy) as response:
                received = time.time()
                date = parse_http_date(response.headers.get("Date"))
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.debug("no clock check against %s: %s", url, exc)
        return None
    if date is None:
        return None
    return date.timestamp() + 0.5 - (sent + received) / 2


@dataclass(frozen=True, slots=True)
class TimeState:
    source: str  # "ntp:HOST:PORT", "https-date", or "none"
    offset: float | None  # seconds to add to the host clock
    checked_at: float
    clock_before_build: bool

    @property
    def synchronized(self) -> bool:
        return self.offset is not None and abs(self.offset) <= MAX_OFFSET

    def as_report(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "offset_s": None if self.offset is None else round(self.offset, 3),
            "synchronized": self.synchronized,
            "clock_before_build": self.clock_before_build,
            "checked_at": self.checked_at,
        }


class TimeSync:
    def __init__(
        self,
        *,
        cloud_url: str,
        ssl_context: Any,
        pools: tuple[str, ...] = (),
        lease_root: Path = Path("/"),
        proxy: str | None = None,
        trust_env: bool = True,
        timeout: float = 3.0,
    ) -> None:
        self.cloud_url = cloud_url.rstrip("/")
        self.ssl_context = ssl_context
        self.pools = pools
        self.lease_root = lease_root
        self.proxy = proxy
        self.trust_env = trust_env
        self.timeout = timeout
        self.state = TimeState("none", None, 0.0, time.time() < BUILD_TIME)

    def _ntp_servers(self) -> list[str]:
        servers: list[str] = []
        try:
            for lease in read_leases(self.lease_root):
                servers += [s for s in lease.ntp_servers if s not in servers]
        except OSError:
            pass
        return servers + [p for p in self.pools if p not in servers]

    async def _ntp(self) -> TimeState | None:
        for server in self._ntp_servers():
            host, _, port = server.partition(":")
            try:
                async with asyncio.timeout(self.timeout):
                    answer = await sntp_query(host, int(port or 123))
            except (NtpError, TimeoutError, OSError, ValueError) as exc:
                log.debug("NTP %s: %s", server, exc)
                continue
            return TimeState(
                f"ntp:{answer.server}", answer.offset, time.time(), time.time() < BUILD_TIME
            )
        return None

    async def _https_date(self) -> TimeState | None:
        url = self.cloud_url + "/.well-known/tether/hello"
        try:
            async with aiohttp.ClientSession(
                trust_env=self.trust_env, timeout=aiohttp.ClientTimeout(total=self.timeout * 3)
            ) as http:
                sent = time.time()
                async with http.get(url, ssl=self.ssl_context, proxy=self.proxy) as response:
                    received = time.time()
                    date = parse_http_date(response.headers.get("Date"))
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None
        if date is None:
            return None
        # The Date header has whole seconds: the offset is known to about ±1 s, enough to
        # tell a right clock from a wrong one.
        offset = date.timestamp() + 0.5 - (sent + received) / 2
        return TimeState("https-date", offset, time.time(), time.time() < BUILD_TIME)

    async def check(self) -> TimeState:
        state = await self._ntp() or await self._https_date()
        if state is None:
            state = TimeState("none", None, time.time(), time.time() < BUILD_TIME)
        if state.clock_before_build:
            log.error(
                "the clock reads %s, before this software was built: certificate checks "
                "will fail until it is set",
                time.strftime("%Y-%m-%d", time.gmtime()),
            )
        elif state.offset is not None and not state.synchronized:
            log.warning("the clock is %.0f s off (source %s)", state.offset, state.source)
        self.state = state
        return state
