"""BatchLoader: lookups that arrive together are answered by one load, each getting its own."""

from __future__ import annotations

import asyncio

import pytest

from tether.cloud.batching import BatchLoader


async def test_concurrent_gets_share_one_load() -> None:
    calls: list[list[int]] = []

    async def load(keys: list[int]) -> dict[int, str]:
        calls.append(sorted(keys))
        return {k: f"v{k}" for k in keys if k != 3}

    loader: BatchLoader[int, str] = BatchLoader(load)
    values = await asyncio.gather(*(loader.get(k) for k in (1, 2, 3, 2)))
    assert values == ["v1", "v2", None, "v2"]
    assert calls == [[1, 2, 3]]  # one load, each key once
    assert await loader.get(4) == "v4"  # a later get starts a new batch
    assert loader.loads == 2


async def test_batches_are_capped() -> None:
    sizes: list[int] = []

    async def load(keys: list[int]) -> dict[int, int]:
        sizes.append(len(keys))
        return {k: k * 2 for k in keys}

    loader: BatchLoader[int, int] = BatchLoader(load, max_batch=4)
    values = await asyncio.gather(*(loader.get(k) for k in range(10)))
    assert values == [k * 2 for k in range(10)]
    assert sorted(sizes) == [2, 4, 4]


async def test_a_failed_load_reaches_every_waiter() -> None:
    async def load(keys: list[str]) -> dict[str, str]:
        raise OSError("store gone")

    loader: BatchLoader[str, str] = BatchLoader(load)
    results = await asyncio.gather(loader.get("a"), loader.get("b"), return_exceptions=True)
    assert [type(r) for r in results] == [OSError, OSError]
    with pytest.raises(OSError, match="store gone"):
        await loader.get("c")
