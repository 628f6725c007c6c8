"""Link history: which tier each gateway is on, why, and the recent tier changes.

The current tier and reason sit beside a bounded history (newest last) so an operator can see a
gateway that moved down to long-poll because a proxy strips WebSocket upgrades, and when it came
back.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from tether.cloud.store.models import JSONDocument, UTCDateTime, gateways, metadata
from tether.cloud.store.store import dialect_insert, write_transaction

__all__ = ["HISTORY_LENGTH", "LinkRecord", "LinkStore", "gateway_links"]

HISTORY_LENGTH = 50
#: Link openings committed in one transaction at most.
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


class LinkStore:
    """Link state and tier history. Link openings are written in groups: a reconnect storm of
    thousands of gateways costs a few transactions, not one each."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.dialect: str = engine.dialect.name
        self._waiting: list[tuple[_Opening, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def opened(
        self,
        gateway_id: str,
        *,
        tier: str,
        reason: str,
        agent_version: str | None,
        peer: str | None,
    ) -> None:
        """A link opened on *tier*: mark the gateway linked and record a tier change. Returns
        once it is committed (together with the other openings that arrived meanwhile)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        opening = _Opening(gateway_id, tier, reason, agent_version, peer, datetime.now(UTC))
        self._waiting.append((opening, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_openings())
        await future

    async def _write_openings(self) -> None:
        while self._waiting:
            group, self._waiting = (
                self._waiting[:OPENINGS_PER_GROUP],
                self._waiting[OPENINGS_PER_GROUP:],
            )
            try:
                await self._commit_openings([o for o, _ in group])
            except BaseException as exc:
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for _, future in group:
                if not future.done():
                    future.set_result(None)

    async def _commit_openings(self, openings: list[_Opening]) -> None:
        latest: dict[str, _Opening] = {}
        for o in openings:  # a gateway that relinked twice in one group: the last one counts
            latest[o.gateway_id] = o
        async with write_transaction(self.engine) as conn:
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
                        set_={
                            c: insert.excluded[c] for c in ("tier", "reason", "since", "history")
                        },
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
        async with write_transaction(self.engine) as conn:
            result = await conn.execute(
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
            return int(result.rowcount or 0)
