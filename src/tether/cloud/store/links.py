"""Link history: which tier each gateway is on, why, and the recent tier changes.

The current tier and reason sit beside a bounded history (newest last) so an operator can see a
gateway that moved down to long-poll because a proxy strips WebSocket upgrades, and when it came
back.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from tether.cloud.store.models import JSONDocument, UTCDateTime, commands, gateways, metadata
from tether.cloud.store.store import dialect_insert, write_transaction
from tether.protocol.commands import CommandEvent, CommandState, transition

__all__ = ["HISTORY_LENGTH", "LinkRecord", "LinkStore", "gateway_links", "stale_statement"]

log = logging.getLogger(__name__)

HISTORY_LENGTH = 50
#: Link openings and closings committed in one transaction at most.
OPENINGS_PER_GROUP = 500

gateway_links = sa.Table(
    "gateway_links",
    metadata,
    sa.Column("gateway_id", sa.String(64), primary_key=True),
    sa.Column("tier", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False, server_default=""),
    sa.Column("since", UTCDateTime(), nullable=False),
    sa.Column("history", JSONDocument, nullable=False),
)


@dataclass(frozen=True, slots=True)
class LinkRecord:
    gateway_id: str
    tier: str
    reason: str
    since: datetime
    history: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class _Opening:
    gateway_id: str
    tier: str
    reason: str
    agent_version: str | None
    peer: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class _Closing:
    gateway_id: str
    opened_at: datetime | None
    at: datetime


_REQUEUED = transition(CommandState.DELIVERED, CommandEvent.REQUEUE)


#: Gateways whose ``last_seen`` one statement of :meth:`LinkStore.seen` moves.
SEEN_CHUNK = 2_000


def stale_statement(now: datetime, *, long_poll_grace: float, poll_grace: float) -> sa.Update:
    """Unlink the HTTPS-tier gateways silent past their grace. Each tier is a range of the
    ``(tier, last_seen)`` index, so the sweep reads what is stale, not every gateway."""
    return (
        gateways.update()
        .where(
            gateways.c.linked.is_(True),
            sa.or_(
                sa.and_(
                    gateways.c.tier == "long-poll",
                    gateways.c.last_seen < now - timedelta(seconds=long_poll_grace),
                ),
                sa.and_(
                    gateways.c.tier == "poll",
                    gateways.c.last_seen < now - timedelta(seconds=poll_grace),
                ),
            ),
        )
        .values(linked=False)
    )


class LinkStore:
    """Link state and tier history. Link openings and closings are written in groups, in the
    order they happened: a reconnect storm of thousands of gateways costs a few transactions,
    not one or two each."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.dialect: str = engine.dialect.name
        self._waiting: list[tuple[_Opening | _Closing, asyncio.Future[None] | None]] = []
        self._writer: asyncio.Task[None] | None = None

    async def opened(
        self,
        gateway_id: str,
        *,
        tier: str,
        reason: str,
        agent_version: str | None,
        peer: str | None,
    ) -> datetime:
        """A link opened on *tier*: mark the gateway linked and record a tier change. Returns
        once it is committed (together with the other openings and closings that arrived
        meanwhile); the time it holds as the link's start, for :meth:`closed`."""
        opening = _Opening(gateway_id, tier, reason, agent_version, peer, datetime.now(UTC))
        await self._queue(opening)
        return opening.at

    async def closed(self, gateway_id: str, *, opened_at: datetime | None) -> None:
        """A link that opened at *opened_at* (what :meth:`opened` returned; None if unknown)
        ended: mark the gateway offline and put its delivered-but-unstarted commands back in
        the queue, unless a newer link of the gateway (here or on another process) has opened
        since. Returns once committed, grouped like the openings."""
        await self._queue(_Closing(gateway_id, opened_at, datetime.now(UTC)))

    def closed_soon(self, gateway_id: str, *, opened_at: datetime | None) -> None:
        """:meth:`closed` without waiting: the closing joins the next group (no task or
        future of its own, so a storm of thousands of dropped links costs little). A failed
        write is logged; :meth:`drain` waits until every queued change is written."""
        self._enqueue(_Closing(gateway_id, opened_at, datetime.now(UTC)), None)

    async def drain(self) -> None:
        """Wait until every change queued so far is written (or its write failed)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def _queue(self, change: _Opening | _Closing) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(change, future)
        await future

    def _enqueue(self, change: _Opening | _Closing, future: asyncio.Future[None] | None) -> None:
        self._waiting.append((change, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_changes())

    async def _write_changes(self) -> None:
        while self._waiting:
            group, self._waiting = (
                self._waiting[:OPENINGS_PER_GROUP],
                self._waiting[OPENINGS_PER_GROUP:],
            )
            try:
                await self._commit([change for change, _ in group])
            except BaseException as exc:
                unheard = 0
                for _, future in group:
                    if future is None:
                        unheard += 1
                    elif not future.done():
                        future.set_exception(exc)
                if unheard:
                    log.error("link state: %d link closings not recorded: %s", unheard, exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for _, future in group:
                if future is not None and not future.done():
                    future.set_result(None)

    async def _commit(self, changes: list[_Opening | _Closing]) -> None:
        last: dict[str, _Opening | _Closing] = {}
        for change in changes:  # a gateway that came and went in one group: the last counts
            last[change.gateway_id] = change
        latest = {g: c for g, c in last.items() if isinstance(c, _Opening)}
        gone = [c for c in last.values() if isinstance(c, _Closing)]
        async with write_transaction(self.engine) as conn:
            if gone:
                await self._commit_closings(conn, gone)
            if latest:
                await self._commit_openings(conn, latest)

    @staticmethod
    async def _commit_closings(conn: Any, gone: list[_Closing]) -> None:
        g = gateways.c
        await conn.execute(
            gateways.update()
            .where(
                g.gateway_id == sa.bindparam("g"),
                # a newer link (here or on another process) has taken over: leave it
                sa.or_(
                    sa.bindparam("opened", type_=UTCDateTime()).is_(None),
                    g.link_since.is_(None),
                    g.link_since <= sa.bindparam("opened", type_=UTCDateTime()),
                ),
            )
            .values(
                linked=False,
                tier=None,
                peer=None,
                last_seen=sa.bindparam("at"),
                link_since=sa.bindparam("at"),
            ),
            [{"g": c.gateway_id, "opened": c.opened_at, "at": c.at} for c in gone],
        )
        at = max(c.at for c in gone)
        offline = sa.select(g.gateway_id).where(
            g.gateway_id.in_([c.gateway_id for c in gone]), g.linked.is_(False)
        )
        await conn.execute(
            commands.update()
            .where(
                commands.c.state == CommandState.DELIVERED.value,
                commands.c.gateway_id.in_(offline.scalar_subquery()),
            )
            .values(state=_REQUEUED.value, updated_at=at)
        )

    async def _commit_openings(self, conn: Any, latest: dict[str, _Opening]) -> None:
        await conn.execute(
            gateways.update()
            .where(gateways.c.gateway_id == sa.bindparam("g"))
            .values(
                linked=True,
                tier=sa.bindparam("t"),
                last_seen=sa.bindparam("at"),
                link_since=sa.bindparam("at"),
                peer=sa.bindparam("p"),
                agent_version=sa.func.coalesce(sa.bindparam("v"), gateways.c.agent_version),
            ),
            [
                {
                    "g": o.gateway_id,
                    "t": o.tier,
                    "at": o.at,
                    "p": o.peer,
                    "v": o.agent_version or None,
                }
                for o in latest.values()
            ],
        )
        rows = {
            row.gateway_id: row
            for row in await conn.execute(
                sa.select(gateway_links).where(gateway_links.c.gateway_id.in_(list(latest)))
            )
        }
        upserts = []
        for o in latest.values():
            row = rows.get(o.gateway_id)
            history: list[dict[str, Any]] = list(row.history) if row is not None else []
            if row is None or row.tier != o.tier or row.reason != o.reason:
                history.append({"at": o.at.isoformat(), "tier": o.tier, "reason": o.reason})
                upserts.append(
                    {
                        "gateway_id": o.gateway_id,
                        "tier": o.tier,
                        "reason": o.reason,
                        "since": o.at,
                        "history": history[-HISTORY_LENGTH:],
                    }
                )
        if upserts:
            insert = dialect_insert(self.dialect, gateway_links)
            await conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["gateway_id"],
                    set_={c: insert.excluded[c] for c in ("tier", "reason", "since", "history")},
                ),
                upserts,
            )

    async def heard(self, gateway_id: str, *, tier: str, peer: str | None) -> None:
        """An exchange on an HTTPS tier: the gateway is linked there; ``link_since`` moves
        only if it had been marked offline meanwhile."""
        now = datetime.now(UTC)
        async with write_transaction(self.engine) as conn:
            await conn.execute(
                gateways.update()
                .where(gateways.c.gateway_id == gateway_id)
                .values(
                    last_seen=now,
                    tier=tier,
                    peer=peer,
                    linked=True,
                    link_since=sa.case(
                        (gateways.c.linked.is_(True), gateways.c.link_since), else_=now
                    ),
                )
            )

    async def seen(self, gateway_ids: list[str], *, at: datetime) -> int:
        """The WebSocket links of *gateway_ids* are held here and alive at *at* (their liveness
        deadline has not passed): move ``last_seen`` forward, a few thousand gateways per
        statement. Only linked gateways are touched, so a link that closed meanwhile keeps the
        time its closing wrote. Returns how many rows moved."""
        moved = 0
        g = gateways.c
        for start in range(0, len(gateway_ids), SEEN_CHUNK):
            chunk = gateway_ids[start : start + SEEN_CHUNK]
            async with write_transaction(self.engine) as conn:
                result = await conn.execute(
                    gateways.update()
                    .where(
                        g.gateway_id.in_(chunk),
                        g.linked.is_(True),
                        sa.or_(g.last_seen.is_(None), g.last_seen < at),
                    )
                    .values(last_seen=at)
                )
                moved += int(result.rowcount or 0)
        return moved

    async def get(self, gateway_id: str) -> LinkRecord | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(gateway_links).where(gateway_links.c.gateway_id == gateway_id)
                )
            ).one_or_none()
        if row is None:
            return None
        return LinkRecord(row.gateway_id, row.tier, row.reason, row.since, list(row.history))

    async def mark_stale(self, *, now: datetime, long_poll_grace: float, poll_grace: float) -> int:
        """HTTPS-tier gateways not heard from within their tier's grace are no longer linked."""
        statement = stale_statement(now, long_poll_grace=long_poll_grace, poll_grace=poll_grace)
        async with write_transaction(self.engine) as conn:
            result = await conn.execute(statement)
            return int(result.rowcount or 0)
