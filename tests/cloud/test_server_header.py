"""Answers name the product, not the Python and aiohttp versions behind it."""

from __future__ import annotations

from pathlib import Path

from tests.support.cloudproc import running_cloud
from tests.support.console import console_client


async def test_every_kind_of_answer_names_only_tether(tmp_path: Path) -> None:
    async with (
        running_cloud(tmp_path / "cloud") as cloud,
        cloud.api() as admin,
        console_client(cloud) as client,
    ):
        answers = [
            await admin.get("/api/v1/whoami"),
            await admin.get("/api/v1/no-such-path"),
            await client.get("/console/login"),
            await client.get("/.well-known/est/cacerts"),
            await client.get("/metrics"),
            await client.get("/nowhere"),
        ]
        for answer in answers:
            assert answer.headers.get("Server") == "tether", (answer.url, answer.headers)
