"""Captive-portal signs: RFC 8908 API answers and portal pages answering for a service."""

from __future__ import annotations

from tether.netcheck.captive import CaptiveState, looks_like_portal, parse_captive_api
from tether.netcheck.http import HttpResponse


def test_captive_api() -> None:
    body = b'{"captive": true, "user-portal-url": "https://portal.site.test/login"}'
    assert parse_captive_api(body) == CaptiveState(True, "https://portal.site.test/login")
    assert parse_captive_api(b'{"captive": false}').captive is False
    assert parse_captive_api(b"<html>").captive is None
    assert parse_captive_api(b'{"captive": "yes"}').captive is None


def test_portal_answers() -> None:
    assert "511" in (looks_like_portal(HttpResponse(511, "x"), "api.test") or "")
    redirect = HttpResponse(302, "Found", {"location": "http://portal.site.test/login"})
    assert "portal.site.test" in (looks_like_portal(redirect, "api.test") or "")
    html = HttpResponse(200, "OK", {"content-type": "text/html; charset=utf-8"}, b"<html>")
    assert looks_like_portal(html, "api.test") is not None


def test_service_answers_are_not_portals() -> None:
    same_host = HttpResponse(301, "Moved", {"location": "https://api.test/v2/"})
    assert looks_like_portal(same_host, "api.test") is None
    json_answer = HttpResponse(200, "OK", {"content-type": "application/json"})
    assert looks_like_portal(json_answer, "api.test") is None
    assert looks_like_portal(HttpResponse(404, "Not Found"), "api.test") is None
