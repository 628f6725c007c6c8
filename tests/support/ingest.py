"""The ingest pipeline in a test: started for a block, stopped after it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tether.cloud.ingest import IngestPipeline

__all__ = ["started"]


@asynccontextmanager
async def started(pipeline: IngestPipeline) -> AsyncIterator[IngestPipeline]:
    pipeline.start()
    try:
        yield pipeline
    finally:
        await pipeline.stop()
