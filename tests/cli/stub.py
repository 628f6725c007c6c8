"""``tether`` run as people run it, against a real cloud or a stub server.

:class:`Stub` is a plain HTTP server on loopback that answers every request with what the test
set and keeps each request line: for what the cloud never answers (an unexpected shape, a proxy's
error page) and for what exactly went over the wire (paths, query strings).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.cloudproc import Cloud, tether_script
from typer.testing import CliRunner

from tether.cli import app

CLI_TIMEOUT = 60.0

#: Variables of the caller's environment a test must not inherit (its own cloud, a proxy).
_NOT_INHERITED = (
    "TETHER_URL",
    "TETHER_TOKEN",
    "TETHER_CA",
    "TETHER_ENROLLMENT_CODE",
    "COLUMNS",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
)


#: Changes to the environment: a value, or None to remove the variable.
Env = Mapping[str, str | None]


def clean_env(**values: str) -> dict[str, str | None]:
    """The caller's environment without :data:`_NOT_INHERITED`, with *values*."""
    return {**dict.fromkeys(_NOT_INHERITED), **values}


def tether(*args: str, env: Env, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``tether ARGS`` as a process (stdout and stderr are pipes, not a terminal)."""
    full = {**os.environ, **env}
    return subprocess.run(
        [str(tether_script()), *args],
        env={k: v for k, v in full.items() if v is not None},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def invoke(*args: str, env: Env, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``tether ARGS`` in this process (quicker); an exception it lets out is raised."""
    result = CliRunner().invoke(app, list(args), env=dict(env), input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


async def tether_on(
    cloud: Cloud, *args: str, token: str | None = None, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """``tether ARGS`` against *cloud*, in a thread so the cloud in this event loop answers."""
    full: dict[str, str | None] = {**cloud.cli_env(token), **env}
    return await asyncio.to_thread(tether, *args, env=full, stdin=stdin)


def no_traceback(done: subprocess.CompletedProcess[str]) -> bool:
    return "Traceback" not in done.stdout + done.stderr


@dataclass
class Stub:
    url: str
    seen: list[str] = field(default_factory=list)
    status: int = 200
    body: bytes = b"[]"
    content_type: str = "application/json"

    def answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.status, self.body, self.content_type = status, body, content_type

    def env(self, **values: str) -> dict[str, str | None]:
        return clean_env(**{"TETHER_URL": self.url, "TETHER_TOKEN": "tt_stub-token", **values})


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def _answer(self) -> None:
        stub: Stub = self.server.stub
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        stub.seen.append(f"{self.command} {self.path}")
        self.send_response(stub.status)
        self.send_header("Content-Type", stub.content_type)
        self.send_header("Content-Length", str(len(stub.body)))
        self.end_headers()
        self.wfile.write(stub.body)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving_stub() -> Iterator[Stub]:
    """A :class:`Stub` on a free loopback port until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    stub = Stub(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.stub = stub  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
