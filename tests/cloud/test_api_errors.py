"""The API's error middleware on a bare aiohttp application: a handler that fails is answered
500 in JSON and logged with its traceback; paths outside ``/api/`` are left alone."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tether.cloud.api import json_errors


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("a bug in a handler")


async def test_a_failing_handler_is_answered_500_in_json_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = web.Application(middlewares=[json_errors])
    app.router.add_get("/api/v1/boom", _boom)
    app.router.add_get("/console/boom", _boom)
    async with TestClient(TestServer(app)) as client:
        answer = await client.get("/api/v1/boom")
        assert answer.status == 500
        assert await answer.json() == {"error": "internal error; the cloud's log has details"}
        outside = await client.get("/console/boom")
        assert outside.status == 500
        assert outside.content_type != "application/json"
    failures = [r for r in caplog.records if r.getMessage() == "API GET /api/v1/boom failed"]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert "a bug in a handler" in str(failures[0].exc_info[1])
