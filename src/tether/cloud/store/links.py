"""Link history: which tier each gateway is on, why, and the recent tier changes.

The current tier and reason sit beside a bounded history (newest last) so an operator can see a
gateway that moved down to long-poll because a proxy strips WebSocket upgrades, and when it came
back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from tether.cloud.store.models import JSONDocument, UTCDateTime, gateways, metadata
from tether.cloud.store.store import dialect_insert, write_transaction

__all__ = ["HISTORY_LENGTH", "LinkRecord", "LinkStore", "gateway_links"]

HISTORY_LENGTH = 50

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


class LinkStore:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.dialect: str = engine.dialect.name

    async def opened(
        self,
        gateway_id: str,
        *,
        tier: str,
        reason: str,
        agent_version: str | None,
        peer: str | None,
    ) -> None:
        """A link opened on *tier*: mark the gateway linked and record a tier change."""
        now = datetime.now(UTC)
        async with write_transaction(self.engine) as conn:
            await conn.execute(
                gateways.update()
                .where(gateways.c.gateway_id == gateway_id)
                .values(
                    linked=True,
                    tier=tier,
                    last_seen=now,
                    link_since=now,
                    peer=peer,
                    **({"agent_version": agent_version} if agent_version else {}),
                )
            )
            row = (
                await conn.execute(
                    sa.select(gateway_links).where(gateway_links.c.gateway_id == gateway_id)
                )
            ).one_or_none()
            history: list[dict[str, Any]] = list(row.history) if row is not None else []
            if row is None or row.tier != tier or row.reason != reason:
                history.append({"at": now.isoformat(), "tier": tier, "reason": reason})
                history = history[-HISTORY_LENGTH:]
                since = now
            else:
                since = row.since
            insert = dialect_insert(self.dialect, gateway_links)
            await conn.execute(
                insert.values(
                    gateway_id=gateway_id, tier=tier, reason=reason, since=since, history=history
                ).on_conflict_do_update(
                    index_elements=["gateway_id"],
                    set_={"tier": tier, "reason": reason, "since": since, "history": history},
                )
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
