"""tether.netcheck: the on-site preflight that proves the network path works, endpoint by endpoint.

One call, shared by ``tether net check`` and the gateway agent::

    report = await run_checks(manifest, CheckOptions(...))   # -> CheckReport (msgspec)

Probe families, one module each: :mod:`~tether.netcheck.dns` (every resolver, DHCP-advertised
ones from :mod:`~tether.netcheck.dhcp`), :mod:`~tether.netcheck.route`,
:mod:`~tether.netcheck.tcp`, :mod:`~tether.netcheck.proxy` (HTTPS_PROXY / NO_PROXY, CONNECT),
:mod:`~tether.netcheck.tls` (version, pinned chain, interception named by issuer),
:mod:`~tether.netcheck.http` (application answer, WebSocket upgrade, long-poll; the probe paths
the cloud serves are documented there), :mod:`~tether.netcheck.mqtt`,
:mod:`~tether.netcheck.timecheck` (NTP, HTTPS Date, build-time floor) and
:mod:`~tether.netcheck.captive`. :mod:`~tether.netcheck.runner` orchestrates them;
:mod:`~tether.netcheck.render` shows the report (table, JSON, firewall-format fixes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tether.netcheck.report import (
    Check,
    CheckReport,
    CheckResult,
    Status,
    decode_report,
    encode_report,
)

if TYPE_CHECKING:
    from tether.netcheck.runner import CheckOptions, ProgressEvent, run_checks

__all__ = [
    "Check",
    "CheckOptions",
    "CheckReport",
    "CheckResult",
    "ProgressEvent",
    "Status",
    "decode_report",
    "encode_report",
    "run_checks",
]


_RUNNER_NAMES = frozenset({"CheckOptions", "ProgressEvent", "run_checks"})


def __getattr__(name: str) -> Any:
    # The runner, and every probe module it loads (DNS, MQTT, NTP…), only once a check runs: an
    # agent whose link works never pays for them.
    if name in _RUNNER_NAMES:
        from tether.netcheck import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
