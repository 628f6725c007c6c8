"""A real tether cloud and real gateway agents for end-to-end tests, on loopback over TLS 1.3.

The cloud runs either in the test's event loop (:func:`running_cloud`, through
``tether.cloud.app.run``) or as a ``tether cloud serve`` subprocess (:class:`CloudProcess`) when a
test must kill and restart it. Agents run in the test's event loop (:func:`running_agent`), so a
test can look at their ledger, identity and ``linked`` event directly. :class:`RawLink` speaks
the link protocol by hand with a gateway's credentials, for tests that play a misbehaving agent.

Every wait is on a condition with a bounded timeout (:func:`wait_for`), never a bare sleep.

    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        code = (await create_token(api, name="b1"))["enrollment_code"]
        async with running_agent(tmp_path / "gw", code=code) as gw:
            await gw.wait_linked()
            done = await run_command(api, gw.gateway_id, "ping")
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import httpx

from tether.cloud.app import ADMIN_TOKEN_FILE, run
from tether.cloud.settings import CloudSettings, load_settings
from tether.gateway.agent import Agent, AgentStopped
from tether.gateway.identity import GatewayIdentity, enroll, load_identity
from tether.gateway.settings import AgentSettings, load_agent_settings
from tether.protocol.messages import CloseCode, Message
from tether.protocol.session import (
    FrameRejected,
    LinkClosed,
    LinkOpened,
    LinkSession,
    Role,
    SessionState,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "FINAL_STATES",
    "Cloud",
    "CloudProcess",
    "RawLink",
    "RunningAgent",
    "StartAgent",
    "agent_settings",
    "cloud_settings",
    "create_token",
    "enroll_gateway",
    "free_port",
    "get_gateway",
    "run_command",
    "running_agent",
    "running_cloud",
    "send_command",
    "tether_script",
    "wait_command",
    "wait_for",
    "wait_gateway",
]

T = TypeVar("T")

#: The bound of every wait in the end-to-end tests (a busy 2-core machine, not a target).
DEFAULT_TIMEOUT = 20.0
FINAL_STATES = frozenset({"succeeded", "failed", "expired", "cancelled"})


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tether_script() -> Path:
    """The ``tether`` console script installed next to this interpreter."""
    path = Path(sys.executable).parent / "tether"
    if not path.exists():
        raise FileNotFoundError(f"no tether script next to {sys.executable}")
    return path


async def wait_for(
    condition: Callable[[], Awaitable[T] | T],
    *,
    within: float = DEFAULT_TIMEOUT,
    what: str = "a condition",
    interval: float = 0.05,
) -> T:
    """Poll *condition* (sync or async) until it returns something truthy; return that.

    Raises :class:`TimeoutError` naming *what* after *within* seconds.
    """
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


# --- the cloud ----------------------------------------------------------------------------


def cloud_settings(data_dir: Path, *, port: int | None = None, **overrides: Any) -> CloudSettings:
    """A loopback cloud on *port* (a free one by default) keeping its state in *data_dir*."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "listen_host": "127.0.0.1",
        "listen_port": port or free_port(),
        "hostname": "127.0.0.1",
        # explicit, so a TETHER_DATABASE_URL in the environment cannot redirect the test
        "database_url": f"sqlite+aiosqlite:///{(data_dir / 'tether.db').resolve()}",
    }
    values.update(overrides)
    return load_settings(None, **values)


@dataclass
class Cloud:
    """What a test needs to talk to a running cloud."""

    settings: CloudSettings

    @property
    def url(self) -> str:
        return self.settings.public_url

    @property
    def port(self) -> int:
        return self.settings.listen_port

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def ca_path(self) -> Path:
        return self.settings.pki_dir / "ca.pem"

    @property
    def database(self) -> str:
        return self.settings.database

    @property
    def admin_token(self) -> str:
        return (self.settings.data_dir / ADMIN_TOKEN_FILE).read_text().strip()

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the cloud against the platform CA file (hostname checked)."""
        return ssl.create_default_context(cafile=str(self.ca_path))

    def api(self, token: str | None = None, *, auth: bool = True) -> httpx.AsyncClient:
        """An operator API client (admin token unless *token*; no Authorization if not *auth*)."""
        headers = {"Authorization": f"Bearer {token or self.admin_token}"} if auth else {}
        return httpx.AsyncClient(
            base_url=self.url,
            verify=self.ssl_context(),
            headers=headers,
            trust_env=False,
            timeout=DEFAULT_TIMEOUT,
        )

    def cli_env(self, token: str | None = None) -> dict[str, str]:
        """The environment the ``tether`` operator CLI reads."""
        env = dict(os.environ)
        env.update(
            TETHER_URL=self.url,
            TETHER_TOKEN=token or self.admin_token,
            TETHER_CA=str(self.ca_path),
            COLUMNS="200",
        )
        return env


@asynccontextmanager
async def running_cloud(data_dir: Path, **overrides: Any) -> AsyncIterator[Cloud]:
    """Run a cloud in this event loop on a free loopback port until the block ends."""
    last_error: OSError | None = None
    for _attempt in range(3):  # the free port may be taken between choosing and binding it
        settings = cloud_settings(data_dir, **overrides)
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.get_running_loop().create_task(run(settings, ready=ready, stop=stop))
        ready_wait = asyncio.get_running_loop().create_task(ready.wait())
        done, _ = await asyncio.wait(
            {task, ready_wait}, timeout=DEFAULT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        ready_wait.cancel()
        if task in done:
            try:
                task.result()
            except OSError as exc:
                last_error = exc
                continue
            raise RuntimeError("the cloud stopped before it was ready")
        if ready_wait not in done:
            stop.set()
            await asyncio.wait_for(task, DEFAULT_TIMEOUT)
            raise TimeoutError("the cloud did not become ready")
        try:
            yield Cloud(settings)
        finally:
            stop.set()
            await asyncio.wait_for(task, DEFAULT_TIMEOUT)
        return
    raise RuntimeError(f"could not bind a cloud port: {last_error}")


class CloudProcess:
    """``tether cloud serve`` as a child process, to be killed and restarted on the same port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        log: Path | None = None,
        config: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.log = log or data_dir.with_name(data_dir.name + ".log")
        #: A settings file (TOML) the process is started with, when given.
        self.config = None if config is None else data_dir.with_name(data_dir.name + ".toml")
        if self.config is not None and config is not None:
            self.config.parent.mkdir(parents=True, exist_ok=True)
            self.config.write_text(config)
        self.process: subprocess.Popen[bytes] | None = None
        self.cloud = Cloud(cloud_settings(data_dir, port=self.port))

    @property
    def argv(self) -> list[str]:
        return [
            str(tether_script()),
            "cloud",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
            "--hostname",
            "127.0.0.1",
            "--database-url",
            self.cloud.database,
            *(["--config", str(self.config)] if self.config is not None else []),
        ]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def _answers(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise RuntimeError(f"tether cloud serve exited ({code}):\n{self.log_tail()}")
        if not self.cloud.ca_path.exists():
            return False
        try:
            async with httpx.AsyncClient(
                verify=self.cloud.ssl_context(), trust_env=False, timeout=2.0
            ) as client:
                response = await client.get(f"{self.cloud.url}/.well-known/tether/hello")
        except httpx.TransportError:
            return False
        return response.status_code == 200

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "TETHER_DATABASE_URL"}
        with self.log.open("ab") as out:
            return subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    async def start(self) -> Cloud:
        """Start the process and return once it answers over TLS."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the cloud process is already running")
        self.process = self._spawn()
        try:
            await wait_for(self._answers, what="tether cloud serve to answer", interval=0.1)
        except TimeoutError:
            await self.kill()
            raise TimeoutError(f"tether cloud serve did not answer:\n{self.log_tail()}") from None
        return self.cloud

    async def _wait_exit(self, within: float) -> int | None:
        process = self.process
        if process is None:
            return None
        with contextlib.suppress(TimeoutError):
            await wait_for(
                lambda: process.poll() is not None, within=within, what="the cloud to exit"
            )
        return process.poll()

    async def kill(self, sig: int = signal.SIGKILL) -> int | None:
        """Send *sig* to the process we started and wait for it to exit; return its code."""
        process = self.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
        code = await self._wait_exit(DEFAULT_TIMEOUT)
        if code is None:  # SIGTERM ignored or shutdown hung: make sure it is gone
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            code = await asyncio.to_thread(process.wait, DEFAULT_TIMEOUT)
        return code

    async def stop(self) -> int | None:
        return await self.kill(signal.SIGTERM)


# --- the operator API -----------------------------------------------------------------------


def _ok(response: httpx.Response, *expected: int) -> Any:
    if response.status_code not in (expected or (200,)):
        raise AssertionError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {response.text}"
        )
    return response.json()


async def create_token(
    api: httpx.AsyncClient, *, name: str | None = None, ttl_seconds: float | None = None
) -> dict[str, Any]:
    """Create a one-time enrollment token; the answer holds ``enrollment_code``."""
    body: dict[str, Any] = {"name": name}
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    result: dict[str, Any] = _ok(await api.post("/api/v1/enrollment-tokens", json=body), 201)
    return result


async def send_command(
    api: httpx.AsyncClient,
    gateway_id: str,
    kind: str,
    args: dict[str, Any] | None = None,
    *,
    ttl_seconds: float | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind, "args": args or {}}
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    result: dict[str, Any] = _ok(
        await api.post(f"/api/v1/gateways/{gateway_id}/commands", json=body), 201
    )
    return result


async def wait_command(
    api: httpx.AsyncClient,
    command_id: str,
    states: frozenset[str] | set[str] = FINAL_STATES,
    *,
    within: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Poll the command until its state is one of *states*; return it."""

    async def reached() -> dict[str, Any] | None:
        command: dict[str, Any] = _ok(await api.get(f"/api/v1/commands/{command_id}"))
        return command if command["state"] in states else None

    return await wait_for(reached, within=within, what=f"command {command_id} in {set(states)}")


async def run_command(
    api: httpx.AsyncClient,
    gateway_id: str,
    kind: str,
    args: dict[str, Any] | None = None,
    *,
    within: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Send a command and wait for its final state."""
    command = await send_command(api, gateway_id, kind, args)
    return await wait_command(api, command["id"], within=within)


async def get_gateway(api: httpx.AsyncClient, gateway_id: str) -> dict[str, Any]:
    """The gateway as the API lists it (``GatewayOut``), from its detail answer."""
    detail: dict[str, Any] = _ok(await api.get(f"/api/v1/gateways/{gateway_id}"))
    gateway: dict[str, Any] = detail["gateway"]
    return gateway


async def wait_gateway(
    api: httpx.AsyncClient,
    gateway_id: str,
    condition: Callable[[dict[str, Any]], bool],
    *,
    within: float = DEFAULT_TIMEOUT,
    what: str = "the gateway's state",
) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        gateway = await get_gateway(api, gateway_id)
        return gateway if condition(gateway) else None

    return await wait_for(reached, within=within, what=f"{gateway_id}: {what}")


# --- gateways -----------------------------------------------------------------------------


def agent_settings(data_dir: Path, **overrides: Any) -> AgentSettings:
    """Agent settings for tests: no proxy from the environment, quick reconnects."""
    values: dict[str, Any] = {"trust_env": False, "reconnect_cap": 1.0}
    values.update(overrides)
    return load_agent_settings(data_dir, **values)


async def enroll_gateway(
    code: str, data_dir: Path, *, name_hint: str | None = None
) -> GatewayIdentity:
    """Enroll into *data_dir*'s identity directory, as ``tether gateway enroll`` does."""
    return await enroll(
        code, agent_settings(data_dir).identity_dir, name_hint=name_hint, trust_env=False
    )


@dataclass
class RunningAgent:
    """An :class:`~tether.gateway.agent.Agent` running as a task of the test's event loop."""

    agent: Agent
    task: asyncio.Task[None]
    stop_event: asyncio.Event
    errors: list[BaseException] = field(default_factory=list)

    @property
    def gateway_id(self) -> str:
        return self.agent.identity.gateway_id

    async def wait_linked(self, within: float = DEFAULT_TIMEOUT) -> None:
        linked = asyncio.get_running_loop().create_task(self.agent.linked.wait())
        done, _ = await asyncio.wait(
            {linked, self.task}, timeout=within, return_when=asyncio.FIRST_COMPLETED
        )
        linked.cancel()
        if self.task in done:
            self.task.result()
            raise AssertionError("the agent stopped before it linked")
        if linked not in done:
            raise TimeoutError(
                f"agent {self.gateway_id} did not link within {within:.0f} s "
                f"(last error: {self.agent.status.last_error})"
            )

    async def wait_unlinked(self, within: float = DEFAULT_TIMEOUT) -> None:
        await wait_for(
            lambda: not self.agent.linked.is_set(),
            within=within,
            what=f"agent {self.gateway_id} to lose its link",
        )

    async def stop(self, within: float = DEFAULT_TIMEOUT) -> None:
        """Ask the agent to stop and wait for ``run()`` to return (AgentStopped is kept)."""
        self.stop_event.set()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), within)
        except AgentStopped as exc:
            self.errors.append(exc)


def start_agent(
    data_dir: Path, identity: GatewayIdentity | None = None, **overrides: Any
) -> RunningAgent:
    """Start an agent for the identity in *data_dir* (already enrolled) as a task."""
    settings = agent_settings(data_dir, **overrides)
    identity = identity or load_identity(settings.identity_dir)
    agent = Agent(settings, identity)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(agent.run(stop))
    return RunningAgent(agent=agent, task=task, stop_event=stop)


#: ``await start_agent("name", **settings)``: enroll a new gateway and run its agent (fixture).
StartAgent = Callable[..., Awaitable[RunningAgent]]


@asynccontextmanager
async def running_agent(
    data_dir: Path, *, code: str | None = None, **overrides: Any
) -> AsyncIterator[RunningAgent]:
    """Enroll with *code* (if given), run the agent, and stop it when the block ends."""
    identity = await enroll_gateway(code, data_dir) if code is not None else None
    running = start_agent(data_dir, identity, **overrides)
    try:
        yield running
    finally:
        if not running.task.done():
            await running.stop()


# --- a hand-driven link ---------------------------------------------------------------------


class RawLink:
    """The gateway side of the link protocol, driven by the test with a gateway's credentials."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext) -> None:
        self.url = url.rstrip("/") + "/link"
        self.ssl_context = ssl_context
        self.session = LinkSession(
            Role.CLIENT, now=time.monotonic(), agent_version="raw-test", boot_id="raw"
        )
        self.received: list[Message] = []
        self.closed: LinkClosed | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def __aenter__(self) -> RawLink:
        self._http = aiohttp.ClientSession(trust_env=False)
        try:
            self._ws = await self._http.ws_connect(
                self.url, ssl=self.ssl_context, autoping=True, heartbeat=None, compress=0
            )
            await self._flush()
            await self.next_message(lambda m: False, until_open=True)
        except BaseException:
            await self._http.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session.state is not SessionState.CLOSED:
            self.session.close(CloseCode.NORMAL, "test done")
            with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
                await self._flush()
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()

    async def _flush(self) -> None:
        assert self._ws is not None
        for frame in self.session.data_to_send():
            await self._ws.send_bytes(frame)

    async def send(self, message: Message) -> None:
        self.session.send(message)
        await self._flush()

    async def next_message(
        self,
        match: Callable[[Message], bool],
        *,
        within: float = DEFAULT_TIMEOUT,
        until_open: bool = False,
    ) -> Message | None:
        """Read until a message matching *match* arrives (returned) or the link opens when
        *until_open* (``None`` returned). Every message read is kept in :attr:`received`."""
        assert self._ws is not None
        deadline = time.monotonic() + within
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching message within {within:.0f} s")
            try:
                msg = await self._ws.receive(timeout=remaining)
            except TimeoutError:
                continue
            if msg.type is not aiohttp.WSMsgType.BINARY:
                raise ConnectionError(f"link ended: {msg.type.name} {msg.data!r}")
            self.session.receive_frame(msg.data, now=time.monotonic())
            await self._flush()
            for event in self.session.events():
                if isinstance(event, LinkOpened):
                    if until_open:
                        return None
                elif isinstance(event, LinkClosed):
                    self.closed = event
                    raise ConnectionError(f"link closed: {event.code} {event.reason}")
                elif isinstance(event, FrameRejected):
                    raise AssertionError(f"the cloud sent a frame we cannot decode: {event}")
                elif isinstance(event, Message):
                    self.received.append(event)
                    if match(event):
                        return event
