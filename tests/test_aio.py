"""cancel_and_wait: a helper's own cancellation is swallowed, the caller's is not."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tether.aio import cancel_and_wait


async def _slow_to_stop(release: asyncio.Event) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        await release.wait()  # clean-up that takes a while, as closing a connection does


async def test_the_helpers_cancellation_is_swallowed() -> None:
    task = asyncio.get_running_loop().create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_a_stop_that_arrives_while_reaping_is_not_lost() -> None:
    release = asyncio.Event()
    rounds = 0

    async def loop(use_helper: bool) -> None:
        nonlocal rounds
        while rounds < 1000:  # bounded: a lost stop shows as many rounds
            rounds += 1
            helper = asyncio.get_running_loop().create_task(_slow_to_stop(release))
            await asyncio.sleep(0)
            if use_helper:
                await cancel_and_wait(helper)
            else:
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper

    for use_helper, lost in ((False, True), (True, False)):
        rounds = 0
        release.clear()
        runner = asyncio.get_running_loop().create_task(loop(use_helper))
        for _ in range(5):  # a few turns of the loop: it is now reaping its first helper
            await asyncio.sleep(0)
        assert rounds == 1
        runner.cancel()  # the stop arrives now
        release.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(runner, 5)
        assert runner.done()
        assert (rounds > 1) is lost, (use_helper, rounds)
        assert runner.cancelled() is not lost


async def test_an_error_the_helper_ended_with_is_raised() -> None:
    async def fails() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("clean-up failed")

    task = asyncio.get_running_loop().create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="clean-up failed"):
        await cancel_and_wait(task)
