"""The hub's timing wheel for link deadlines: each link is looked at once its deadline has
passed, never before, moved when its deadline moves, and the ticker stops when no link waits."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from typing import cast

from tether.cloud.link import LinkHub, WebSocketLink

GRANULARITY = 0.02


class FakeLink:
    """What the wheel uses of a link: its slot, and the call when the slot comes up."""

    def __init__(self, hub: LinkHub, deadline: float) -> None:
        self.hub = hub
        self.slot: int | None = None
        self.deadline = deadline
        self.looked_at: list[float] = []
        self.done = asyncio.Event()

    def deadline_due(self, now: float) -> None:
        self.looked_at.append(now)
        if now >= self.deadline:
            self.done.set()
            self.deadline = math.inf
        self.hub.schedule(cast(WebSocketLink, self), self.deadline)


def _add(hub: LinkHub, deadline: float) -> FakeLink:
    link = FakeLink(hub, deadline)
    hub.schedule(cast(WebSocketLink, link), deadline)
    return link


async def test_links_are_looked_at_after_their_deadlines_and_not_before() -> None:
    hub = LinkHub(granularity=GRANULARITY)
    start = time.monotonic()
    links = [_add(hub, start + d) for d in (0.05, 0.1, 0.2, 0.3)]
    for link in links:
        await asyncio.wait_for(link.done.wait(), 5)
    for link in links:
        assert link.looked_at, "never looked at"
        assert all(t >= start for t in link.looked_at)
        assert link.looked_at[-1] >= start + 0.05
        assert link.slot is None  # a deadline of inf leaves the wheel
    # each was looked at once its deadline had passed; none was looked at twice for nothing
    assert [len(link.looked_at) for link in links] == [1, 1, 1, 1]
    assert hub._wheel == {}
    assert hub._ticker is None  # the ticker stops once nothing waits


async def test_a_moved_deadline_moves_the_link() -> None:
    hub = LinkHub(granularity=GRANULARITY)
    start = time.monotonic()
    link = _add(hub, start + 0.05)
    first_slot = link.slot
    link.deadline = start + 0.3  # e.g. heard from meanwhile: the slot comes up early
    await asyncio.wait_for(link.done.wait(), 5)
    assert first_slot is not None
    assert len(link.looked_at) == 2  # once early (re-slotted), once when due
    assert link.looked_at[0] < start + 0.3 <= link.looked_at[1]


async def test_an_unscheduled_link_is_not_looked_at() -> None:
    hub = LinkHub(granularity=GRANULARITY)
    start = time.monotonic()
    gone = _add(hub, start + 0.04)
    stays = _add(hub, start + 0.1)
    hub.schedule(cast(WebSocketLink, gone), math.inf)
    assert gone.slot is None
    await asyncio.wait_for(stays.done.wait(), 5)
    assert gone.looked_at == []


async def test_a_deadline_in_the_past_is_looked_at_on_the_next_tick() -> None:
    hub = LinkHub(granularity=GRANULARITY)
    link = _add(hub, time.monotonic() - 10.0)
    await asyncio.wait_for(link.done.wait(), 5)
    assert len(link.looked_at) == 1


class HeartbeatingLink(FakeLink):
    """A link heard from before each deadline: every look moves its deadline on, *rounds* times."""

    def __init__(self, hub: LinkHub, rounds: int) -> None:
        super().__init__(hub, time.monotonic() + 2 * GRANULARITY)
        self.rounds = rounds

    def deadline_due(self, now: float) -> None:
        self.looked_at.append(now)
        if len(self.looked_at) >= self.rounds:
            self.done.set()
            self.deadline = math.inf
        else:
            self.deadline = now + 2 * GRANULARITY
        self.hub.schedule(cast(WebSocketLink, self), self.deadline)


async def test_one_ticker_runs_however_often_links_are_moved() -> None:
    """A link moved to a later slot while the wheel ticks must not start a second ticker: the
    extra ones would each run every tick from then on, more of them with every move."""
    hub = LinkHub(granularity=GRANULARITY)
    ticks: list[float] = []
    tick = hub._tick

    def counted() -> None:
        ticks.append(time.monotonic())
        tick()

    hub._tick = counted  # type: ignore[method-assign]
    links = [HeartbeatingLink(hub, rounds=6) for _ in range(3)]
    for link in links:
        hub.schedule(cast(WebSocketLink, link), link.deadline)
    for link in links:
        await asyncio.wait_for(link.done.wait(), 5)
    assert len(ticks) >= 6
    # one ticker: each tick waits for the previous one's interval; a second ticker would run
    # in the same loop iteration as the first
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert min(gaps) >= GRANULARITY / 2, f"ticks ran together: {sorted(gaps)[:5]}"
    await asyncio.sleep(0)
    assert hub._wheel == {}
    assert hub._ticker is None
