"""asyncio helpers shared by the cloud and the agent."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel *tasks* and wait until each has ended.

    Their own cancellation is swallowed; a cancellation of the caller while it waits is not.
    The usual ``with suppress(CancelledError): await task`` cannot tell the two apart: a stop
    that arrives while a loop reaps its helper task is lost, and the loop goes on. An exception
    other than cancellation that a task ended with is raised, as awaiting it would.
    """
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
