"""A gateway whose link keeps being taken over (two hosts with one identity) is warned of."""

from __future__ import annotations

import logging
import time

import pytest

from tether.cloud.link import REPLACED_WARN, REPLACED_WINDOW, LinkHub


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_link_taken_over_again_and_again_is_warned_of_once_per_window(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    hub = LinkHub()
    caplog.set_level(logging.WARNING, logger="tether.cloud.link")

    def take_over() -> bool:
        clock.now += 30.0
        return hub.replaced("gw-1", old_peer="192.0.2.1", new_peer="192.0.2.2")

    # An odd take-over (a NAT rebinding, a restart) is no sign of a clone.
    assert [take_over() for _ in range(REPLACED_WARN - 1)] == [False] * (REPLACED_WARN - 1)
    assert not caplog.records
    assert take_over()
    [warning] = caplog.records
    assert "gateway gw-1: its link was taken over 3 times within 10 minutes" in warning.message
    assert "now from 192.0.2.2, before from 192.0.2.1" in warning.message
    assert "another host is probably running with this gateway's identity" in warning.message
    assert take_over()
    assert len(caplog.records) == 1  # once per window
    assert not hub.replaced("gw-2", old_peer=None, new_peer=None)  # another gateway: its own

    # Take-overs spread wider than the window are not a clone.
    clock.now += 2 * REPLACED_WINDOW
    spread = []
    for _ in range(REPLACED_WARN + 1):
        clock.now += REPLACED_WINDOW / (REPLACED_WARN - 1) + 1
        spread.append(hub.replaced("gw-3", old_peer=None, new_peer=None))
    assert spread == [False] * (REPLACED_WARN + 1)
