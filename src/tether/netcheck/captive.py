"""Captive portals: advertised ones (DHCP option 114, RFC 8910/8908) and ones that answer
in the service's place (HTTP 511, a redirect to another host, a login page instead of JSON)."""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass

from tether.netcheck.http import HttpResponse

__all__ = ["CaptiveState", "looks_like_portal", "parse_captive_api"]


@dataclass(frozen=True)
class CaptiveState:
    captive: bool | None  # None: the API answer was not understood
    user_portal_url: str | None = None
    venue_info_url: str | None = None


def parse_captive_api(body: bytes) -> CaptiveState:
    """An RFC 8908 API answer: ``{"captive": true, "user-portal-url": …}``."""
    try:
        data = json.loads(body)
    except ValueError:
        return CaptiveState(None)
    if not isinstance(data, dict) or not isinstance(data.get("captive"), bool):
        return CaptiveState(None)
    portal = data.get("user-portal-url")
    venue = data.get("venue-info-url")
    return CaptiveState(
        captive=data["captive"],
        user_portal_url=portal if isinstance(portal, str) else None,
        venue_info_url=venue if isinstance(venue, str) else None,
    )


def looks_like_portal(response: HttpResponse, host: str) -> str | None:
    """Why ``response`` looks like a portal or block page answering for ``host`` (or None)."""
    if response.status == 511:
        return "HTTP 511 Network Authentication Required: a captive portal wants a login"
    location = response.headers.get("location", "")
    if 300 <= response.status < 400 and location:
        target = urllib.parse.urlsplit(location).hostname
        if target and target.lower() != host.lower():
            return f"HTTP {response.status} redirect to {location}: a captive portal or block page"
    content_type = response.headers.get("content-type", "").lower()
    if response.status == 200 and "html" in content_type:
        return "an HTML page answered instead of the service: a captive portal or block page"
    return None
