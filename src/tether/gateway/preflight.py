"""The preflight inside the agent: when the link cannot reach its best tier, find out why.

The same checks as ``tether net check`` run against this deployment's manifest (fetched from the
cloud over the pinned CA when possible, else built from the cloud's URL), at most once per
interval; the report goes to the cloud over whatever tier works, so an operator sees "the site
proxy strips WebSocket upgrades" without anyone on site.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from tether.gateway.link import clean_error
from tether.netcheck.proxy import ProxySettings, parse_proxy_url
from tether.netcheck.report import CheckReport
from tether.netreq.loader import parse_manifest
from tether.netreq.model import Manifest
from tether.netreq.own import DeploymentSettings, build_own_manifest
from tether.netreq.serve import MANIFEST_PATH
from tether.pki.tlscontext import pinned_client_context

if TYPE_CHECKING:
    from tether.netcheck.runner import CheckOptions

__all__ = ["Preflight", "summary"]

log = logging.getLogger(__name__)


#: The failing (then warning) checks a summary names; the report has them all.
NAMED_IN_SUMMARY = 4


class PreflightUnavailable(ValueError):
    """The preflight cannot run here; the message says why and what it would need."""


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def summary(report: CheckReport) -> str:
    """One line: the verdict, the counts, and which checks failed (or warned) on what."""
    counts = ", ".join(f"{s.value} {n}" for s, n in report.counts().items() if n)
    line = f"{report.status.value} ({counts})"
    for label, wanted in (("failed", "fail"), ("warned", "warn")):
        bad = [r for r in report.results if r.status.value == wanted]
        if bad:
            named = "; ".join(
                f"{r.check.value} {r.target}: {r.finding}" for r in bad[:NAMED_IN_SUMMARY]
            )
            more = (
                f"; and {len(bad) - NAMED_IN_SUMMARY} more" if len(bad) > NAMED_IN_SUMMARY else ""
            )
            line += f"; {label}: {named}{more}"
    return line


class Preflight:
    def __init__(
        self,
        *,
        cloud_url: str,
        ca_path: str,
        interval: float = 600.0,
        proxy: str | None = None,
        trust_env: bool = True,
        long_poll_wait: float | None = None,
        options: CheckOptions | None = None,
    ) -> None:
        """*proxy* and *trust_env* are the agent's own: the checks take the path its link
        takes, and *long_poll_wait* is how long its long-poll requests are held (the check
        holds one as long). *options* may set what else the checks use (resolvers, lease
        files…); the pinned CA always comes from *ca_path*."""
        self.cloud_url = cloud_url.rstrip("/")
        self.ca_path = ca_path
        self.interval = interval
        self.proxy = proxy
        self.trust_env = trust_env
        self.long_poll_wait = long_poll_wait
        self.options = options  # None: the checks' defaults
        self.last_run: float | None = None
        self.last_report: dict[str, Any] | None = None
        #: When the last report was made (Unix time) and its one-line :func:`summary`.
        self.last_run_at: float | None = None
        self.last_summary: str | None = None

    def due(self) -> bool:
        return self.last_run is None or time.monotonic() - self.last_run >= self.interval

    async def _manifest(self) -> Manifest:
        fetch_error = "the cloud answered no manifest"
        try:
            async with (
                aiohttp.ClientSession(
                    trust_env=self.trust_env, timeout=aiohttp.ClientTimeout(total=15)
                ) as http,
                http.get(
                    self.cloud_url + MANIFEST_PATH,
                    proxy=self.proxy,
                    ssl=pinned_client_context(self.ca_path),
                ) as response,
            ):
                if response.status == 200:
                    return parse_manifest(await response.read(), source="cloud", fmt="json")
                fetch_error = f"the cloud answered HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            fetch_error = clean_error(str(exc)) or type(exc).__name__
            log.info(
                "manifest not fetched from the cloud (%s); building it from the URL", fetch_error
            )
        parts = urlsplit(self.cloud_url)
        host = parts.hostname or "localhost"
        if _is_address(host):
            # A manifest names hosts by DNS name: without the cloud's own, there is none to check.
            raise PreflightUnavailable(
                f"the cloud URL names an IP address ({host}), so the network requirements must "
                f"come from the cloud, and they could not be fetched: {fetch_error}"
            )
        return build_own_manifest(DeploymentSettings(hostname=host, port=parts.port or 443))

    def _proxy_settings(self) -> ProxySettings | None:
        """The proxy the agent's link uses (None: the environment's, as the link reads it)."""
        if self.proxy is not None:
            return ProxySettings(https_proxy=parse_proxy_url(self.proxy))
        return None if self.trust_env else ProxySettings()

    async def run(self) -> dict[str, Any]:
        """Run the checks now; returns the report as a JSON-able document."""
        self.last_run = time.monotonic()
        manifest = await self._manifest()
        # The checks' code (DNS, MQTT, NTP probes, X.509…) is loaded the first time they run:
        # an agent whose link works never runs them.
        from tether.netcheck.runner import CheckOptions, run_checks
        from tether.netcheck.tls import TrustAnchors

        with open(self.ca_path, "rb") as fh:  # noqa: ASYNC230 (a small local file)
            anchors = TrustAnchors.from_pem(fh.read())

        options = dataclasses.replace(self.options or CheckOptions(), anchors=anchors)
        if options.proxy is None:
            options = dataclasses.replace(options, proxy=self._proxy_settings())
        if self.long_poll_wait is not None:
            options = dataclasses.replace(options, long_poll_wait=self.long_poll_wait)
        report: CheckReport = await run_checks(manifest, options)
        document: dict[str, Any] = msgspec.to_builtins(report)
        document["status"] = report.status.value
        self.last_report = document
        self.last_run_at = time.time()
        self.last_summary = summary(report)
        log.warning("preflight: %s", self.last_summary)
        return document
