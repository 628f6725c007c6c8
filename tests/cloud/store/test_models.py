"""Timestamps: aware UTC in and out on both engines; naive datetimes are refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from tether.cloud.store import Store
from tether.cloud.store.models import gateways

PARIS_SUMMER = timezone(timedelta(hours=2))


async def test_offset_datetimes_come_back_as_the_same_instant_in_utc(store: Store) -> None:
    created = datetime(2030, 6, 1, 14, 30, 15, 123456, tzinfo=PARIS_SUMMER)
    record = await store.create_gateway(gateway_id="gw-1", name="n", now=created)
    fetched = await store.get_gateway("gw-1")
    assert fetched is not None
    for value in (record.created_at, fetched.created_at):
        assert value == created
        assert value.tzinfo is UTC
        assert value.hour == 12
        assert value.microsecond == 123456


async def test_naive_datetime_is_refused_and_nothing_is_written(store: Store) -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        await store.create_gateway(gateway_id="gw-1", name="n", now=datetime(2030, 1, 1))
    assert await store.get_gateway("gw-1") is None


async def test_comparisons_use_instants_not_local_clock_text(store: Store) -> None:
    # 01:30 at +02:00 is 23:30 UTC the day before: stored text must still compare by instant.
    await store.create_gateway(gateway_id="gw-1", name="n", now=datetime(2030, 1, 1, tzinfo=UTC))
    earlier = datetime(2030, 1, 1, 1, 30, tzinfo=PARIS_SUMMER)
    later = datetime(2030, 1, 1, 0, 30, tzinfo=UTC)
    async with store.engine.connect() as conn:
        before = await conn.scalar(
            sa.select(sa.func.count()).where(gateways.c.created_at > earlier)
        )
        after = await conn.scalar(sa.select(sa.func.count()).where(gateways.c.created_at > later))
    assert (before, after) == (1, 0)
